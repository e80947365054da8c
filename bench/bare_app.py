"""The baseline: a bare Starlette app that returns fixed bytes, served like gpucloud is."""

from __future__ import annotations

import sys

import uvicorn
from starlette.applications import Starlette
from starlette.responses import Response
from starlette.routing import Route


def main() -> None:
    port = int(sys.argv[1])
    body = open(sys.argv[2], "rb").read()

    async def endpoint(request):
        return Response(body, media_type="application/json")

    app = Starlette(routes=[Route("/bare", endpoint)])
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)


if __name__ == "__main__":
    main()
