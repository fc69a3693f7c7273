"""The console over the app itself (no browser): an HTTPS client, so the Secure session cookie
travels, signed in with a key the way the sign-in form does it."""

from __future__ import annotations

import contextlib
import re
from collections.abc import AsyncIterator

import httpx
from fastapi import FastAPI

CSRF_FIELD = re.compile(r'name="csrf" value="([^"]+)"')


@contextlib.asynccontextmanager
async def console_client(app: FastAPI, key: str) -> AsyncIterator[httpx.AsyncClient]:
    """A client of `app` signed in to the console with `key` (its lifespan already running)."""
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)  # a 500 is an answer
    async with httpx.AsyncClient(transport=transport, base_url="https://console.test") as client:
        form = await client.get("/console/login")
        found = CSRF_FIELD.search(form.text)
        assert found is not None, form.text
        signed = await client.post("/console/login", data={"csrf": found[1], "api_key": key})
        assert signed.status_code == 303 and signed.headers["location"] == "/console", signed.text
        yield client
