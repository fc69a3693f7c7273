"""The compliance console: a FastAPI app of its own, mounted at /console (app.console.app)."""
