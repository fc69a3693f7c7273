"""The HTTP service: app factory, security, errors, the fast ingest path, routes."""
