"""The records the service makes itself (a read's trace, a threshold violation, a syslog
message): queued through the one admission, as a client's events are, and counted as accepted."""

from __future__ import annotations

from prometheus_client import Counter

from app.core.caller import Caller
from app.events.record import EventRecord
from app.queue.admission import Admission, admit_and_queue
from app.queue.shards import ShardedStream


class Recorder:
    def __init__(
        self, stream: ShardedStream, admission: Admission, entry_events: int, accepted: Counter
    ) -> None:
        self._stream = stream
        self._admission = admission
        self._entry_events = entry_events
        self._accepted = accepted

    async def record(
        self, caller: Caller, record: EventRecord, *, rated: bool = True, quota: bool = True
    ) -> None:
        """Queue one record of `caller`'s organization, admitted as `caller`'s (its rate
        unless not `rated`, its organization's quota unless not `quota`)."""

        async def put() -> None:
            await self._stream.enqueue([record], self._entry_events)

        await admit_and_queue(
            self._admission,
            caller.key_id,
            caller.scopes,
            caller.organization_id,
            1,
            put,
            rated=rated,
            quota=quota,
        )
        self._accepted.inc()
