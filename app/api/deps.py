"""Typed access to the lifespan's resources from a request."""

from __future__ import annotations

from typing import TYPE_CHECKING

from fastapi import Request

if TYPE_CHECKING:
    from app.wiring import Resources


def resources(request: Request) -> Resources:
    res: Resources = request.app.state.resources
    return res
