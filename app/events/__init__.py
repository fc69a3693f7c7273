"""The audit event: its fields and their validators, the model a client's event is checked
against, event ids, and the one record shape that is queued, hashed and stored."""
