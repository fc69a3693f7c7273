"""The Redis stream between the API and the writers: shards, coalesced writes, admission,
dead letters."""
