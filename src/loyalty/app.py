"""The Litestar application. ``create_app(settings)`` builds it; nothing happens at import time."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from litestar import Litestar
from litestar.di import Provide
from litestar.middleware.base import DefineMiddleware
from litestar.openapi import OpenAPIConfig
from litestar.openapi.spec import Components, SecurityScheme
from redis.asyncio import Redis

import loyalty
from loyalty import apidocs, distribution
from loyalty.activity.routes import ROUTES as ACTIVITY_ROUTES
from loyalty.audit.routes import ROUTES as AUDIT_ROUTES
from loyalty.auth.revocation import RevocationListener
from loyalty.auth.routes import ROUTES as KEY_ROUTES
from loyalty.auth.service import Authenticator
from loyalty.benefits.checkout import CatalogueCache
from loyalty.benefits.routes import ROUTES as BENEFIT_ROUTES
from loyalty.console import web as console_web
from loyalty.db import create_engine, create_posting_pool
from loyalty.http import health, problems, ratelimit, security
from loyalty.http.edge import MAX_BODY, EdgeChecks
from loyalty.http.lanes import PUBLIC_PATHS, AuthMiddleware, StrictRequest, provide_principal
from loyalty.http.openapi import ProblemDocs
from loyalty.imports.routes import build_routes as import_routes
from loyalty.jobs.routes import ROUTES as JOB_ROUTES
from loyalty.ledger import group_commit
from loyalty.ledger.routes import ROUTES as LEDGER_ROUTES
from loyalty.members.routes import ROUTES as MEMBER_ROUTES
from loyalty.observability import wiring as observability
from loyalty.programmes.routes import ROUTES as PROGRAMME_ROUTES
from loyalty.reports.routes import ROUTES as REPORT_ROUTES
from loyalty.segments.routes import ROUTES as SEGMENT_ROUTES
from loyalty.settings import Settings, ensure_secret_key
from loyalty.tiers.routes import ROUTES as TIER_ROUTES
from loyalty.webhooks.routes import ROUTES as WEBHOOK_ROUTES


def create_app(settings: Settings) -> Litestar:
    if not settings.database_url or not settings.redis_url:
        raise ValueError("create_app needs settings with database_url and redis_url")
    if not settings.secret_key:
        raise ValueError("create_app needs a secret_key (see settings.ensure_secret_key)")

    @asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        engine = create_engine(
            settings.database_url or "",
            pool_size=settings.db_pool_size,
            connect_timeout=settings.db_timeout_seconds,
            pool_timeout=settings.db_timeout_seconds,
            command_timeout=settings.db_command_timeout_seconds,
        )
        # Short socket timeouts: with Redis gone, what needs it answers 503 at once.
        redis = Redis.from_url(
            settings.redis_url or "",
            socket_connect_timeout=settings.redis_timeout_seconds,
            socket_timeout=settings.redis_timeout_seconds,
        )
        app.state.settings = settings
        app.state.engine = engine
        # Postings are single statements: they go through a plain asyncpg pool, without
        # SQLAlchemy's connection and transaction machinery on the hottest path.
        app.state.posting_pool = await create_posting_pool(
            settings.database_url or "",
            size=settings.db_pool_size,
            connect_timeout=settings.db_timeout_seconds,
            command_timeout=settings.db_command_timeout_seconds,
        )
        # How long a request waits for a pooled posting connection before it answers 503.
        app.state.pool_timeout = settings.db_timeout_seconds
        # ... and how long a posting, an event or a checkout call may wait on the database in all.
        app.state.db_deadline = settings.db_deadline_seconds
        # On Citus the committer batches per shard: each batch runs on its shard's worker
        # (docs/group-commit.md).
        citus = await distribution.detect(app.state.posting_pool)
        app.state.committer = group_commit.for_settings(app.state.posting_pool, settings, citus=citus)
        if citus and app.state.committer is not None:
            # The shard map is read now, not by the first request's flush (which reads it then
            # if the database could not answer at start-up).
            await app.state.committer.load_shards()
        app.state.redis = redis
        # Benefit definitions and tier maps for the checkout check, stamped with their version.
        app.state.benefit_catalogues = CatalogueCache()
        app.state.authenticator = Authenticator(
            engine=engine, secret=settings.secret_key or "", cache_ttl=settings.key_cache_ttl_seconds
        )
        revocations = RevocationListener(settings.database_url or "", app.state.authenticator.cache)
        revocations.start()
        app.state.revocations = revocations
        try:
            yield
        finally:
            await revocations.stop()
            await redis.aclose()
            if app.state.committer is not None:
                await app.state.committer.close()
            await app.state.posting_pool.close()
            await engine.dispose()

    openapi = OpenAPIConfig(
        title="loyalty",
        version=loyalty.__version__,
        description=(
            "Points ledger, tiers and benefits of a loyalty programme.\n\n"
            "Every request body is JSON of its documented schema, read strictly: integers are "
            "JSON integers, unknown fields are refused, and no text may hold a NUL character "
            "(U+0000), which PostgreSQL cannot store. A request that breaks its schema is a 400 "
            "`invalid_request` naming the field; a value the schema allows but the programme "
            "does not (an undeclared event type, say) is a 400 `invalid_input`."
        ),
        path="/schema",
        render_plugins=apidocs.render_plugins(),  # scripts served from the package, not a CDN
        components=Components(
            security_schemes={
                "bearer": SecurityScheme(
                    type="http", scheme="bearer", description="An API key (lk_...) or a member token."
                )
            }
        ),
        security=[{"bearer": []}],
    )
    # The console authenticates by its session cookie (console.web.console_guard), not a key.
    auth = DefineMiddleware(
        AuthMiddleware, exclude=["^/schema", "^/console", *(f"^{p}$" for p in PUBLIC_PATHS)]
    )
    app = Litestar(
        route_handlers=[
            health.live,
            health.ready,
            apidocs.assets_router(),
            *PROGRAMME_ROUTES,
            *MEMBER_ROUTES,
            *LEDGER_ROUTES,
            *ACTIVITY_ROUTES,
            *SEGMENT_ROUTES,
            *TIER_ROUTES,
            *WEBHOOK_ROUTES,
            *BENEFIT_ROUTES,
            *JOB_ROUTES,
            *import_routes(settings.import_max_bytes),
            *KEY_ROUTES,
            *REPORT_ROUTES,
            *AUDIT_ROUTES,
            *console_web.routers(),
        ],
        template_config=console_web.template_config(),
        lifespan=[lifespan, observability.lifespan],
        # EdgeChecks first: bad ids, NUL characters, non-JSON and oversized bodies never reach a route.
        middleware=[EdgeChecks, auth],
        request_max_body_size=MAX_BODY,
        dependencies={"who": Provide(provide_principal)},
        request_class=StrictRequest,
        exception_handlers=problems.EXCEPTION_HANDLERS,  # type: ignore[arg-type]
        openapi_config=openapi,
        # Logging is set up once per process (observability.logs), not by the app.
        logging_config=None,
        debug=False,
    )
    ProblemDocs.install(app)
    # Each install wraps the handler before it, so the last one is outermost: the observability
    # edge gives every answer (429s and CORS preflights included) a request id and a metric, and
    # the security headers inside it are on every answer the rate limiter or the app gives.
    ratelimit.install(app, settings)
    security.install(app, settings)
    observability.instrument_app(app, settings)
    return app


def app_from_env() -> Litestar:
    """Factory for granian/uvicorn: settings are read here, once per process."""
    settings = ensure_secret_key(Settings.from_env())
    observability.configure_process_logging(settings, default_format="json")
    return create_app(settings)
