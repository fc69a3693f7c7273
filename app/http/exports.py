"""An export as an HTTP answer, the API's and the console's alike: the file streamed in a guarded
stream, named for saving, its end recorded however it comes."""

from __future__ import annotations

from app.http.guarded_stream import GuardedStream
from app.read.events import Export


def export_answer(export: Export) -> GuardedStream:
    return GuardedStream(
        export.chunks,
        slot=export.slot,
        send_timeout_s=export.send_timeout_s,
        media_type=export.media_type,
        headers={"Content-Disposition": f'attachment; filename="{export.filename}"'},
        on_end=export.finish,
    )
