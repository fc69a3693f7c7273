"""The field types of an event, with their validators: times, addresses, identifiers, actions and
the closed vocabularies (status, classification, priority). Queries take the same types."""

from __future__ import annotations

import functools
import re
from datetime import UTC, datetime
from ipaddress import IPv6Address, ip_address
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, AwareDatetime, BeforeValidator, StringConstraints
from pydantic_core import PydanticCustomError

NO_NUL = r"^[^\x00]*$"  # PostgreSQL text cannot hold U+0000

EARLIEST = datetime(1970, 1, 1, tzinfo=UTC)

LATEST = datetime(9999, 12, 30, tzinfo=UTC)


def _in_range(value: datetime) -> datetime:
    """Event and query times live between 1970 and 9999 (and so convert to UTC safely)."""
    try:
        utc = value.astimezone(UTC)
    except OverflowError:
        utc = None
    if utc is None or not EARLIEST <= utc <= LATEST:
        raise PydanticCustomError("timestamp_out_of_range", "time must be between 1970 and 9999")
    return utc


# A dotted quad already in normal form (no leading zeros): it is its own normal text. Parsing
# with the ipaddress module is slow, and every event's address comes through here.
_NORMAL_IPV4 = re.compile(
    r"(?:(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)\.){3}(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)"
)


def _plain_address(value: Any) -> str:
    """An IPv4 or IPv6 address in its normal text form (no zone id)."""
    if not isinstance(value, str) or len(value) > 64:
        raise PydanticCustomError("ip_address", "ip_address must be an IP address string")
    if _NORMAL_IPV4.fullmatch(value):
        return value
    normal = _normal_address(value)
    if normal is None:
        raise PydanticCustomError("ip_address", "ip_address is not an IP address")
    if normal == "":
        raise PydanticCustomError("ip_address", "ip_address must not carry a zone id")
    return normal


@functools.lru_cache(maxsize=4096)
def _normal_address(value: str) -> str | None:
    """The normal text of an address; None: not one; "": an IPv6 address with a zone id."""
    try:
        address = ip_address(value)
    except ValueError:
        return None
    if isinstance(address, IPv6Address) and address.scope_id is not None:
        return ""
    return str(address)


EventTime = Annotated[AwareDatetime, AfterValidator(_in_range)]

Address = Annotated[str, BeforeValidator(_plain_address)]

Identifier = Annotated[str, StringConstraints(min_length=1, max_length=256, pattern=NO_NUL)]

LongText = Annotated[str, StringConstraints(max_length=4096, pattern=NO_NUL)]

Action = Annotated[
    str,
    StringConstraints(
        min_length=1, max_length=128, pattern=r"^[A-Za-z0-9_\-]+(\.[A-Za-z0-9_\-]+)*$"
    ),
]

ActionPrefix = Annotated[
    str, StringConstraints(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9_\-.]+$")
]

Status = Literal["attempt", "success", "failure"]

Classification = Literal["PUBLIC", "INTERNAL", "CONFIDENTIAL", "PHI"]

Priority = Literal["normal", "high"]
