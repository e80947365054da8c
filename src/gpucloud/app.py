"""The FastAPI application: routers, error shapes, background worker lifecycle."""

from __future__ import annotations

import inspect
import logging
import traceback
from contextlib import asynccontextmanager

import anyio.to_thread
from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from gpucloud import __version__, openapi
from gpucloud.accounts import routes as accounts
from gpucloud.accounts.auth import require_admin
from gpucloud.admin import routes as admin
from gpucloud.billing import routes as billing
from gpucloud.catalog import admin_routes as catalog_admin
from gpucloud.catalog import routes as catalog
from gpucloud.console import routes as console
from gpucloud.errors import APIError, FieldError, safe_error, validation_detail
from gpucloud.instances import admin_routes as instances_admin
from gpucloud.instances import container_routes, vm_routes
from gpucloud.jsonresp import JSON
from gpucloud.request_context import request_id
from gpucloud.routing import add_slash_twins, include_flat, index_routes
from gpucloud.runtime import Runtime
from gpucloud.settings import Settings, get_settings
from gpucloud.web import server
from gpucloud.web.guard import GuardMiddleware
from gpucloud.web.logs import configure as configure_logging
from gpucloud.web.metrics_route import metrics_endpoint
from gpucloud.web.middleware import RequestMiddleware
from gpucloud.workers.runner import BackgroundWorker

log = logging.getLogger("gpucloud")

DESCRIPTION = """\
A self-hostable GPU cloud marketplace. `/gpu` is the Fluence GPU Cloud API (header
`X-API-KEY`); `/admin` is the operator side (header `X-ADMIN-KEY`).

Errors: 422 with a list of `{type, loc, msg, input}`; 400 with a string `detail`; 403 for a
missing or bad key; 404 for unknown (or other accounts') instances.
"""


def create_app(settings: Settings | None = None, rt: Runtime | None = None) -> FastAPI:
    settings = settings or (rt.settings if rt else get_settings())
    owns_runtime = rt is None
    rt = rt or Runtime.build(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        # Every blocking call of a request (sync routes, run_in_threadpool) takes a token of
        # this limiter; anyio's default of 40 lets 40 threads fight over the GIL.
        anyio.to_thread.current_default_thread_limiter().total_tokens = \
            settings.blocking_threads(rt.db.is_sqlite)
        worker = None
        if settings.workers:
            worker = BackgroundWorker(rt)
            worker.start()
        try:
            yield
        finally:
            if worker is not None:
                worker.stop()
            if owns_runtime:
                rt.close()

    extra = {}
    if "telemetry" in inspect.signature(FastAPI.__init__).parameters:
        on = settings.opentelemetry
        extra["telemetry"] = {"tracing": on, "metrics": on, "logs": on}
    app = FastAPI(
        **extra,
        title="gpucloud — GPU Cloud API",
        version=__version__,
        description=DESCRIPTION,
        docs_url="/gpu/api-docs",
        openapi_url="/gpu/api-docs/openapi.json",
        redoc_url=None,
        redirect_slashes=False,
        lifespan=lifespan,
    )
    app.state.rt = rt
    # First in the route list: finds a request's route in one step (routing.RouteIndex).
    index_routes(app)
    _install_error_handlers(app)
    _include_routers(app)
    openapi.install(app)
    # The Fluence docs also name this address for the document.
    app.add_route("/gpu/openapi.json", lambda _: JSON(app.openapi()), include_in_schema=False)
    # Operator-only, outside the public document like the rest of /admin's plumbing.
    app.add_api_route("/metrics", metrics_endpoint, methods=["GET"], include_in_schema=False,
                      dependencies=[Depends(require_admin)])
    # The one stack every route passes (added through the public API; Starlette puts its
    # error handling outside and the exception handlers inside it). The last added is the
    # outermost: limits run inside the request id and access log, so their 413/429 have both.
    app.add_middleware(GuardMiddleware, settings=settings)
    app.add_middleware(RequestMiddleware)
    return app


def app_factory() -> FastAPI:
    """What each process of `gpucloud serve --workers N` runs (uvicorn `--factory`): settings
    from the environment that `serve` prepared, its own Runtime and background worker.
    Migrations and bootstrap already ran once in `serve`."""
    settings = get_settings()
    configure_logging(settings.log_level, settings.log_format, settings.access_log)
    server.configure(settings)
    app = create_app(settings, Runtime.build(settings, migrate=False))
    server.settle_heap(settings)
    return app


def _include_routers(app: FastAPI) -> None:
    # VM/bare-metal paths before containers: "/gpu/instances/vms" must not be taken for an
    # instance id.
    for router in (catalog.router, vm_routes.router, container_routes.router, accounts.public,
                   billing.router, accounts.admin, billing.admin, catalog_admin.router,
                   instances_admin.router, instances_admin.machines, admin.router,
                   console.router):
        add_slash_twins(router)
        if not include_flat(app, router):
            app.include_router(router)


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(APIError)
    async def _api_error(_: Request, exc: APIError):
        return JSON({"detail": exc.detail}, status_code=exc.status_code)

    @app.exception_handler(FieldError)
    async def _field_error(_: Request, exc: FieldError):
        return JSON({"detail": [safe_error(e) for e in exc.errors]}, status_code=422)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_: Request, exc: RequestValidationError):
        return JSON(validation_detail(exc.errors()), status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_: Request, exc: StarletteHTTPException):
        return JSON({"detail": exc.detail}, status_code=exc.status_code,
                    headers=getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception):
        # The traceback says where; never the request body, and not the exceptions this one
        # interrupted (a validation error's text holds the body it rejected).
        trace = "".join(traceback.format_exception(exc, chain=False))
        log.error("unhandled %s on %s %s\n%s", type(exc).__name__, request.method,
                  request.url.path, trace)
        # Starlette answers this one outside the middleware stack: add the request id here.
        rid = request_id()
        return JSON({"detail": "Internal server error"}, status_code=500,
                    headers={"X-Request-ID": rid} if rid else None)
