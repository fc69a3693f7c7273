"""PostgreSQL, Redis and the service itself run as local processes: `make run`'s dev mode, the
test suite when no servers are given, the fault harness and the benchmark. Nothing a deployment
runs imports this package."""
