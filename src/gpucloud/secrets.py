"""Encryption at rest for registry credentials (Fernet: AES-128-CBC + HMAC-SHA256).

The key comes from GPUCLOUD_SECRET_KEY, or is generated once and kept in
`<data_dir>/gpucloud-secret.key` with mode 0600 — never in the database it protects.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from cryptography.fernet import Fernet

from gpucloud.settings import Settings


def load_or_create_key(settings: Settings) -> bytes:
    if settings.secret_key:
        return settings.secret_key.encode()
    path = Path(settings.data_dir) / "gpucloud-secret.key"
    if path.exists():
        return path.read_bytes().strip()
    path.parent.mkdir(parents=True, exist_ok=True)
    key = Fernet.generate_key()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(key)
    return key


class SecretBox:
    def __init__(self, key: bytes):
        self._fernet = Fernet(key)

    def seal(self, value: dict[str, Any] | None) -> bytes | None:
        if value is None:
            return None
        return self._fernet.encrypt(json.dumps(value).encode())

    def seal_text(self, value: str) -> str:
        """A secret inside a stored config (BMC passwords): the Fernet token as text."""
        return self._fernet.encrypt(value.encode()).decode()

    def open_text(self, token: str) -> str:
        return self._fernet.decrypt(token.encode()).decode()

    def open(self, token: bytes | None) -> dict[str, Any] | None:
        if token is None:
            return None
        return json.loads(self._fernet.decrypt(token))
