"""The errors a caller can be told of, each with its HTTP status and code; how they
are answered is app.api.errors' (the API's JSON) and app.console.errors' (the console's pages)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


class ApiError(Exception):
    status_code = 400
    code = "bad_request"

    def __init__(
        self,
        message: str,
        *,
        details: Any = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.details = details
        self.headers = dict(headers or {})


class MalformedJson(ApiError):
    status_code = 400
    code = "malformed_json"


class NestedTooDeep(ApiError):
    status_code = 400
    code = "json_too_deep"


class InvalidCursor(ApiError):
    status_code = 400
    code = "invalid_cursor"


class Unauthenticated(ApiError):
    status_code = 401
    code = "unauthenticated"


class Forbidden(ApiError):
    status_code = 403
    code = "forbidden"


class NotFound(ApiError):
    status_code = 404
    code = "not_found"


class Conflict(ApiError):
    status_code = 409
    code = "conflict"


class PayloadTooLarge(ApiError):
    status_code = 413
    code = "payload_too_large"


class UnsupportedMediaType(ApiError):
    status_code = 415
    code = "unsupported_media_type"


class InvalidEvents(ApiError):
    status_code = 422
    code = "validation_failed"


class Backpressure(ApiError):
    status_code = 503
    code = "queue_full"


class Unavailable(ApiError):
    status_code = 503
    code = "unavailable"
