"""`python -m app ...`: one module per command group."""
