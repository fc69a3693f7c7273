"""PostgreSQL tables as the service sees them: models, partitions, API key rows."""
