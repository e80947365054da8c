"""The account's spend-per-day chart, drawn on the server as an inline SVG (no script, no
chart library): bars with their values as text, so it reads the same in a screen reader."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

WIDTH, HEIGHT, TOP, BOTTOM = 700, 180, 18, 24


@dataclass(frozen=True)
class Bar:
    day: str
    label: str
    micro: int
    x: float
    y: float
    width: float
    height: float


def spend_bars(per_day: dict[str, int], today: dt.date, days: int = 14) -> list[Bar]:
    dates = [today - dt.timedelta(days=days - 1 - i) for i in range(days)]
    peak = max([per_day.get(d.isoformat(), 0) for d in dates] + [1])
    slot = WIDTH / days
    room = HEIGHT - TOP - BOTTOM
    bars = []
    for i, d in enumerate(dates):
        micro = per_day.get(d.isoformat(), 0)
        h = room * micro / peak
        bars.append(Bar(day=d.isoformat(), label=d.strftime("%d %b"), micro=micro,
                        x=i * slot + slot * 0.15, y=TOP + room - h, width=slot * 0.7, height=h))
    return bars
