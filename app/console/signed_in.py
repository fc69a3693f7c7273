"""Session authentication as a dependency: every console page but the sign-in form is for a
signed-in caller whose key still holds the `read` scope; anyone else is sent to sign in."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request

from app.console import session as sessions
from app.core.caller import Caller
from app.http.deps import ResourcesDep
from app.queue.trail import Reader


class SignInRequired(Exception):
    """No session, or its key revoked (the session goes with it): to the sign-in page."""

    def __init__(self, revoked: bool = False) -> None:
        super().__init__("sign in")
        self.revoked = revoked


@dataclass(frozen=True, slots=True)
class SignedIn:
    caller: Caller
    session: sessions.Session
    reader: Reader  # the caller, and the page's path: each read a page makes is recorded so

    @property
    def who(self) -> str:
        return f"{self.caller.organization_id} · key {self.caller.key_id[:8]}"


async def signed_in(request: Request, res: ResourcesDep) -> SignedIn:
    session = await sessions.load(res.redis, res.settings, request.cookies.get(sessions.COOKIE))
    if session is None:
        raise SignInRequired
    caller = await res.key_cache.verify(session.key_hash)
    if caller is None or "read" not in caller.scopes:  # revoked: the session goes with it
        await sessions.delete(res.redis, res.settings, session.sid)
        raise SignInRequired(revoked=True)
    request.state.key_id = caller.key_id  # for the access log
    found = SignedIn(caller, session, Reader(caller, request.url.path))
    request.state.signed_in = found  # for an error page's header
    return found


SignedInDep = Annotated[SignedIn, Depends(signed_in)]
