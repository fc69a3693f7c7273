"""The background writer: batches from the stream, sealed into PostgreSQL."""
