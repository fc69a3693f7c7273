"""API keys: creation, scopes, rows the service vouches for with a MAC, and the lookup cache."""
