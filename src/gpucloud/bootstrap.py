"""What `gpucloud serve` does before it listens: admin key, default images, demo catalog and
demo account, the local container provider. Returns what must be printed once."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from sqlalchemy import select

from gpucloud.accounts import service as accounts
from gpucloud.accounts.models import Account, Meta
from gpucloud.catalog.demo import seed_default_images, seed_demo_catalog
from gpucloud.catalog.local_provider import register_local_provider
from gpucloud.money import to_micro

log = logging.getLogger("gpucloud")

DEMO_ACCOUNT_META = "demo_account_id"
DEMO_BALANCE = "1000"


@dataclass
class BootstrapResult:
    admin_key: str | None = None  # newly generated: print once
    demo_account_id: str | None = None
    demo_api_key: str | None = None
    notes: list[str] = field(default_factory=list)


def bootstrap(rt) -> BootstrapResult:
    result = BootstrapResult()
    now = rt.clock.now()
    with rt.db.write() as s:
        result.admin_key = accounts.ensure_admin_key(s, rt.settings.admin_key)
        seed_default_images(s)
        if rt.settings.effective_demo:
            seed_demo_catalog(s, now)
            account_id = s.scalar(select(Meta.value).where(Meta.key == DEMO_ACCOUNT_META))
            if account_id is None or s.get(Account, account_id) is None:
                account, key = accounts.create_account(s, "demo", to_micro(DEMO_BALANCE), now)
                s.merge(Meta(key=DEMO_ACCOUNT_META, value=account.id))
                account_id = account.id
            else:
                # A fresh key each start: the old ones stay valid, this one is printable.
                _, key = accounts.create_api_key(s, account_id, None, now)
            result.demo_account_id, result.demo_api_key = account_id, key
    if rt.settings.local_provider and rt.settings.database_url is None:
        note = register_local_provider(rt)
        if note:
            result.notes.append(note)
    rt.invalidate("plans")
    return result
