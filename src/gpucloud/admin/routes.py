"""POST/GET /admin/clock: the manual clock that lets tests and demos run hours in milliseconds."""

from __future__ import annotations

import datetime as dt
from typing import Annotated

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, ConfigDict, Field, model_validator

from gpucloud.accounts.auth import require_admin
from gpucloud.bodies import BodyRoute
from gpucloud.common import NumberIn, RequestModel
from gpucloud.errors import BadRequest
from gpucloud.jsonresp import JSON, isoformat_z
from gpucloud.threads import run_aside
from gpucloud.workers.runner import drain

router = APIRouter(prefix="/admin", route_class=BodyRoute, tags=["admin: clock"],
                    dependencies=[Depends(require_admin)])


class ClockMove(RequestModel):
    model_config = ConfigDict(extra="forbid")
    advance_seconds: Annotated[float, NumberIn] | None = Field(None, ge=0, le=10 * 365 * 86400,
                                                              examples=[3600])
    now: dt.datetime | None = Field(None, examples=["2026-11-27T15:00:00Z"])

    @model_validator(mode="after")
    def _one_of(self):
        if (self.advance_seconds is None) == (self.now is None):
            raise ValueError("Give exactly one of advance_seconds or now")
        return self


class ClockOut(BaseModel):
    now: str


@router.get("/clock", response_model=ClockOut, operation_id="adminGetClock")
def get_clock(request: Request):
    rt = request.app.state.rt
    rt.clock.refresh()
    return JSON({"now": isoformat_z(rt.clock.now())})


@router.post("/clock", response_model=ClockOut, operation_id="adminMoveClock")
async def move_clock(body: ClockMove, request: Request):
    rt = request.app.state.rt
    if not rt.clock.manual:
        raise BadRequest(
            "The clock can only be moved when the server runs with GPUCLOUD_CLOCK=manual"
        )
    # Aside, one move at a time: it reads the clock's row (a database call, never on the
    # event loop) and drains every step due up to the target, which can take long; the
    # blocking routes' thread (one on SQLite) stays free meanwhile.
    now = await run_aside(request.app.state, "clock_moves", 1, _move, rt, body)
    return JSON({"now": isoformat_z(now)})


def _move(rt, body: ClockMove) -> dt.datetime:
    rt.clock.refresh()
    if body.now is not None:
        target = body.now if body.now.tzinfo else body.now.replace(tzinfo=dt.timezone.utc)
        if target < rt.clock.now():
            raise BadRequest("The clock cannot move backwards")
    else:
        target = rt.clock.now() + dt.timedelta(seconds=body.advance_seconds)
    return drain(rt, target)
