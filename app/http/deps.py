"""Typed dependencies: what a route or a console page is given, by its type, from the resources
the lifespan opened (`Annotated` aliases, so a signature says what it takes)."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy.ext.asyncio import AsyncEngine

from app.apikeys.cache import KeyCache
from app.core.config import Settings
from app.intake.dead_letters import DeadLetterDesk
from app.intake.service import Ingest
from app.queue.recorder import Recorder
from app.queue.shards import ShardedStream
from app.read.events import EventReads
from app.read.integrity import Integrity
from app.read.log import LogReads
from app.read.reports import PhiReports
from app.wiring import Resources


def resources(request: Request) -> Resources:
    """The lifespan's resources. The console, a mounted app, shares its parent's state."""
    res: Resources = request.app.state.resources
    return res


def settings(request: Request) -> Settings:
    return resources(request).settings


def engine(request: Request) -> AsyncEngine:
    return resources(request).engine


def stream(request: Request) -> ShardedStream:
    return resources(request).stream


def key_cache(request: Request) -> KeyCache:
    return resources(request).key_cache


def ingest(request: Request) -> Ingest:
    return resources(request).ingest


def recorder(request: Request) -> Recorder:
    return resources(request).recorder


def event_reads(request: Request) -> EventReads:
    return resources(request).event_reads


def phi_reports(request: Request) -> PhiReports:
    return resources(request).phi_reports


def integrity(request: Request) -> Integrity:
    return resources(request).integrity


def dead_letters(request: Request) -> DeadLetterDesk:
    return resources(request).dead_letters


def log_reads(request: Request) -> LogReads:
    return resources(request).log_reads


ResourcesDep = Annotated[Resources, Depends(resources)]
SettingsDep = Annotated[Settings, Depends(settings)]
EngineDep = Annotated[AsyncEngine, Depends(engine)]
StreamDep = Annotated[ShardedStream, Depends(stream)]
IngestDep = Annotated[Ingest, Depends(ingest)]
RecorderDep = Annotated[Recorder, Depends(recorder)]
EventReadsDep = Annotated[EventReads, Depends(event_reads)]
PhiReportsDep = Annotated[PhiReports, Depends(phi_reports)]
IntegrityDep = Annotated[Integrity, Depends(integrity)]
DeadLettersDep = Annotated[DeadLetterDesk, Depends(dead_letters)]
LogReadsDep = Annotated[LogReads, Depends(log_reads)]
