"""An organization's dead letters, for its admins: listed, sent back to the writers, deleted.

Dead letters hold the organization's audit events, so each of these is recorded in its audit
trail (app.queue.trail) before it answers or acts; when it cannot be recorded, nothing happens
(503). A replay is admitted as new events are (the queue's bounds), not rated."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from app.core.service_macs import ServiceMacs
from app.queue.admission import Admission, admit_and_queue
from app.queue.dead_letters import MOST_SELECTED, DeadLetter, DeadLetters, Outcome
from app.queue.recorder import Recorder
from app.queue.shards import ShardedStream
from app.queue.trail import Reader, record_read


@dataclass(frozen=True, slots=True)
class Done:
    """What a replay or delete did, and the ids asked for that the organization does not have."""

    outcome: Outcome
    not_found: list[str]


class DeadLetterDesk:
    """The dead-letter work of one process (built once, app.wiring)."""

    def __init__(
        self,
        stream: ShardedStream,
        macs: ServiceMacs,
        admission: Admission,
        recorder: Recorder,
    ) -> None:
        self._stream = stream
        self._macs = macs
        self._admission = admission
        self._recorder = recorder

    def of(self, organization: str) -> DeadLetters:
        return DeadLetters(self._stream, organization, self._macs)

    async def page(
        self, reader: Reader, after: str | None, limit: int, asked: dict[str, Any]
    ) -> tuple[list[DeadLetter], str | None]:
        """A page of the reader's organization's dead letters, oldest first, recorded."""
        letters, next_cursor = await self.of(reader.caller.organization_id).page(after, limit)
        await record_read(self._recorder, reader, "dead_letter_list", asked, len(letters))
        return letters, next_cursor

    async def replay(self, reader: Reader, ids: list[str] | None, everything: bool) -> Done:
        caller = reader.caller
        dead = self.of(caller.organization_id)
        wanted, letters = await self._select(dead, ids, everything)

        async def put() -> Outcome:
            details = self._details(everything, wanted, letters)
            await record_read(self._recorder, reader, "dead_letter_replay", details, len(letters))
            return await dead.replay(letters)

        # What moved is counted by the next poll of the queue (recount).
        events = sum(letter.events for letter in letters)
        done = await admit_and_queue(
            self._admission,
            caller.key_id,
            caller.scopes,
            caller.organization_id,
            events,
            put,
            rated=False,
            recount=True,
        )
        return Done(done, _missing(wanted, [*done.ids, *done.refused]))

    async def delete(self, reader: Reader, ids: list[str] | None, everything: bool) -> Done:
        dead = self.of(reader.caller.organization_id)
        wanted, letters = await self._select(dead, ids, everything)
        details = self._details(everything, wanted, letters)
        await record_read(self._recorder, reader, "dead_letter_delete", details, len(letters))
        done = await dead.delete([letter.id for letter in letters])
        return Done(done, _missing(wanted, done.ids))

    async def _select(
        self, dead: DeadLetters, ids: list[str] | None, everything: bool
    ) -> tuple[list[str], list[DeadLetter]]:
        """The ids asked for (all: the oldest MOST_SELECTED), and the caller's items among them."""
        if everything:
            wanted = await dead.first_ids(MOST_SELECTED)
        else:
            wanted = list(dict.fromkeys(ids or ()))
        return wanted, await dead.fetch(wanted)

    def _details(
        self, everything: bool, wanted: list[str], letters: list[DeadLetter]
    ) -> dict[str, Any]:
        """What the audit record of a replay or delete names: the items, their events, and
        the ids asked for that the organization does not have."""
        event_ids = [event_id for letter in letters for event_id in letter.event_ids]
        return {
            "all": everything,
            "ids": [letter.id for letter in letters],
            "events": sum(letter.events for letter in letters),
            "event_ids": event_ids[:MOST_SELECTED],
            "not_found": _missing(wanted, [letter.id for letter in letters]),
        }


def _missing(wanted: list[str], found: list[str]) -> list[str]:
    present = set(found)
    return [dead_id for dead_id in wanted if dead_id not in present]
