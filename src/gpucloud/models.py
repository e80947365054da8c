"""Every domain's tables, imported in one place for Alembic and `metadata`."""

from gpucloud.accounts.models import Account, ApiKey, Meta  # noqa: F401
from gpucloud.billing.models import LedgerEntry  # noqa: F401
from gpucloud.catalog.models import DefaultImage, Offer, OfferZone, Provider  # noqa: F401
from gpucloud.console.models import ConsoleSession  # noqa: F401
from gpucloud.db import Base  # noqa: F401
from gpucloud.drivers.simulated.models import SimWorkload  # noqa: F401
from gpucloud.idempotency import IdempotencyKey  # noqa: F401
from gpucloud.instances.models import (  # noqa: F401
    GpuAllocation,
    Instance,
    InstanceEvent,
    Machine,
    PortAllocation,
)
