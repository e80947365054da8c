"""The console's router: every page under /console, hidden from the OpenAPI document."""

from __future__ import annotations

from fastapi import APIRouter

from gpucloud.console import admin, deploy, instances, pages, signin
from gpucloud.console.web import ConsoleRoute, redirect, static_file

router = APIRouter(prefix="/console", include_in_schema=False, route_class=ConsoleRoute)


@router.get("")
async def bare():
    return redirect("/console/")


@router.get("/static/{path:path}")
async def static(path: str):
    return static_file(path)


for _module in (signin, pages, deploy, instances, admin):
    router.include_router(_module.router)
