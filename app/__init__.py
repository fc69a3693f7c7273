"""audit-ingest: HIPAA audit events accepted over HTTP, queued in Redis, sealed into PostgreSQL.

One package per domain, layered (see README.md, The code).
"""
