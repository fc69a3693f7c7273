"""API keys: creation, scopes, sealed rows and the lookup cache."""
