"""create_app(settings) and the lifespan that owns every connection and background task."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles
from prometheus_client import CollectorRegistry
from prometheus_fastapi_instrumentator import Instrumentator
from swagger_ui_bundle import swagger_ui_path

from app.api.errors import install_error_handlers, protocol_responses
from app.api.fastpath import AuditApp
from app.api.ingest_answers import event_component_schemas
from app.api.request_metrics import RequestMetrics
from app.api.routes import events, fhir, health, ingest, integrity, log, phi, queue
from app.console.app import console_mount
from app.core.config import Settings
from app.core.metrics import Metrics
from app.core.runtime import tune_gc
from app.monitor.thresholds import api_monitor
from app.wiring import close_resources, open_resources, poll_queue_depth
from app.writer.group import WriterGroup


@contextlib.asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    settings: Settings = app.state.settings
    res = await open_resources(settings, app.state.metrics)
    app.state.resources = res
    try:
        res.background.append(asyncio.create_task(poll_queue_depth(res), name="depth"))
        if settings.run_writers and settings.writers > 0:
            res.writers = WriterGroup(settings, res.engine, res.stream, res.metrics, res.recorder)
            res.writers.start()
        if settings.threshold_events:
            monitor = api_monitor(res).run()
            res.background.append(asyncio.create_task(monitor, name="thresholds"))
        yield
    finally:
        await close_resources(res)


def create_app(settings: Settings) -> FastAPI:
    app = AuditApp(
        title="audit-ingest",
        version="0.1.0",
        description="HIPAA audit events: accepted at once, sealed into PostgreSQL.",
        lifespan=lifespan,
        docs_url=None,  # served below from local assets: no CDN
        redoc_url=None,
        responses=protocol_responses(),  # every route added to the app documents them
    )
    app.state.settings = settings
    app.state.metrics = Metrics.create()
    install_error_handlers(app)
    for module in (ingest, fhir, events, phi, integrity, log, queue, health):
        app.include_router(module.router)
    app.router.routes.append(console_mount(app.state))
    app.request_metrics = _instrument(app, app.state.metrics.registry)
    _describe_event_bodies(app)
    _serve_docs(app)
    return app


def _instrument(app: FastAPI, registry: CollectorRegistry) -> RequestMetrics:
    """The HTTP metrics (app.api.request_metrics), fed by prometheus-fastapi-instrumentator's
    middleware for the framework's routes and by the fast ingest path for its own."""
    measured = RequestMetrics(registry)
    instrumentator = Instrumentator(
        should_group_status_codes=False,
        excluded_handlers=["/metrics", "/healthz", "/readyz"],
        registry=registry,
    )
    instrumentator.add(measured.instrumentation).instrument(app)
    return measured


def create_app_from_env() -> FastAPI:
    """The app of one of several `serve` processes (AUDIT_API_PROCESSES > 1)."""
    from app.core.logs import setup_logging

    settings = Settings()
    setup_logging(settings.log_level)
    app = create_app(settings)
    tune_gc()
    return app


def _describe_event_bodies(app: FastAPI) -> None:
    """Add the event schemas that the raw-body ingest routes refer to."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = build()
            schema.setdefault("components", {}).setdefault("schemas", {}).update(
                event_component_schemas()
            )
        return app.openapi_schema or build()

    app.openapi = openapi  # type: ignore[method-assign]


def _serve_docs(app: FastAPI) -> None:
    """The interactive API docs at /docs with Swagger UI's files served by the app itself, so
    they work on a network with no way out."""
    app.mount("/docs-assets", StaticFiles(directory=swagger_ui_path), name="docs-assets")

    async def docs() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url=app.openapi_url or "/openapi.json",
            title="audit-ingest API",
            swagger_js_url="/docs-assets/swagger-ui-bundle.js",
            swagger_css_url="/docs-assets/swagger-ui.css",
            swagger_favicon_url="/docs-assets/favicon-32x32.png",
        )

    app.add_api_route("/docs", docs, methods=["GET"], include_in_schema=False)
