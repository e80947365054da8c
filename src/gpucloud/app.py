"""The FastAPI application: routers, error shapes, background worker lifecycle."""

from __future__ import annotations

import inspect
import logging
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from gpucloud import __version__
from gpucloud.accounts import routes as accounts
from gpucloud.admin import routes as admin
from gpucloud.billing import routes as billing
from gpucloud.catalog import admin_routes as catalog_admin
from gpucloud.catalog import routes as catalog
from gpucloud.errors import APIError, FieldError
from gpucloud.fastpath import promote
from gpucloud.instances import admin_routes as instances_admin
from gpucloud.instances import container_routes, vm_routes
from gpucloud.jsonresp import JSON
from gpucloud.runtime import Runtime
from gpucloud.settings import Settings, get_settings
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
    _install_error_handlers(app)
    _include_routers(app)
    return app


def _include_routers(app: FastAPI) -> None:
    app.include_router(catalog.router)
    # VM/bare-metal paths first: "/gpu/instances/vms" must not be taken for an instance id.
    app.include_router(vm_routes.router)
    app.include_router(container_routes.router)
    app.include_router(accounts.public)
    app.include_router(billing.router)
    app.include_router(accounts.admin)
    app.include_router(billing.admin)
    app.include_router(catalog_admin.router)
    app.include_router(instances_admin.router)
    app.include_router(instances_admin.machines)
    app.include_router(admin.router)
    promote(app)


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(APIError)
    async def _api_error(_: Request, exc: APIError):
        return JSON({"detail": exc.detail}, status_code=exc.status_code)

    @app.exception_handler(FieldError)
    async def _field_error(_: Request, exc: FieldError):
        return JSON({"detail": jsonable_encoder(exc.errors)}, status_code=422)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_: Request, exc: RequestValidationError):
        errors = []
        for err in exc.errors():
            err = dict(err)
            err.pop("url", None)
            if "ctx" in err:
                # Exceptions in ctx are not JSON; the documented shape shows them as {}.
                err["ctx"] = {k: (v if isinstance(v, (str, int, float, bool, type(None)))
                                  else {} if isinstance(v, Exception) else str(v))
                              for k, v in err["ctx"].items()}
            errors.append(err)
        return JSON({"detail": jsonable_encoder(errors)}, status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_: Request, exc: StarletteHTTPException):
        return JSON({"detail": exc.detail}, status_code=exc.status_code,
                    headers=getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception):
        log.exception("unhandled error", exc_info=exc)
        return JSON({"detail": "Internal server error"}, status_code=500)
