"""gpucloud.client: a typed client for the gpucloud public and admin API (httpx, sync and async).

    from gpucloud.client import Client
    with Client("http://127.0.0.1:8000", api_key="gc_...") as gc:
        cheapest = gc.container_plans()[0]

Responses are pydantic models with `Decimal` money; errors are `ApiError` subclasses carrying
the server's `detail`.
"""

from gpucloud.client import models
from gpucloud.client.async_ import AsyncClient
from gpucloud.client.errors import (
                                    ApiError,
                                    AuthError,
                                    BadRequestError,
                                    GpuCloudError,
                                    NotFoundError,
                                    ServerError,
                                    TransportError,
                                    ValidationError,
)
from gpucloud.client.instances import Instance, ssh_command, status_of
from gpucloud.client.plans import PlanRow
from gpucloud.client.sync import Client
from gpucloud.client.wire import DEFAULT_URL, MissingCredentials

__all__ = [
                                    "DEFAULT_URL",
                                    "ApiError",
                                    "AsyncClient",
                                    "AuthError",
                                    "BadRequestError",
                                    "Client",
                                    "GpuCloudError",
                                    "Instance",
                                    "MissingCredentials",
                                    "NotFoundError",
                                    "PlanRow",
                                    "ServerError",
                                    "TransportError",
                                    "ValidationError",
                                    "models",
                                    "ssh_command",
                                    "status_of",
]
