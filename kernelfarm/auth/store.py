"""The tenant table on disk, under the data dir; read and written by the supervisor only.

``<data_dir>/admin.token`` (0600, the token alone on one line) is made by the first
``serve`` on a data dir and is the admin's credential; ``<data_dir>/tenants.json`` holds
the other tenants with their token *hashes*.  Both are replaced durably (write, flush,
fsync, rename, fsync the directory: :func:`kernelfarm.durable.write_file`): a change that
was answered survives a power cut, and a crash mid-write leaves the old file whole.
"""

from __future__ import annotations

import json
from pathlib import Path

from kernelfarm import durable
from kernelfarm.auth.table import ADMIN, Tenant, TenantTable
from kernelfarm.auth.tokens import (
    ADMIN_TOKEN_FILE,
    hash_token,
    new_token,
    read_token_file,
)
from kernelfarm.errors import ConfigError

TENANTS_FILE = "tenants.json"


def admin_tenant(token_hash: str) -> Tenant:
    return Tenant(ADMIN, token_hash, ("*",), ("*",), admin=True)


class TenantStore:
    def __init__(self, data_dir: Path) -> None:
        self.admin_path = data_dir / ADMIN_TOKEN_FILE
        self.tenants_path = data_dir / TENANTS_FILE

    def ensure_admin_token(self) -> bool:
        """Make ``admin.token`` if the data dir has none; True if it was made now."""
        if self.admin_path.exists():
            return False
        durable.write_file(self.admin_path, (new_token() + "\n").encode())
        return True

    def load(self, version: int = 0) -> TenantTable:
        """The table on disk (admin included) at ``version``; ``ConfigError`` if unusable."""
        try:
            admin = admin_tenant(hash_token(read_token_file(self.admin_path)))
        except (OSError, ValueError) as exc:
            raise ConfigError(f"cannot read the admin token {self.admin_path}: {exc}") \
                from None
        tenants = {ADMIN: admin}
        try:
            raw = self.tenants_path.read_bytes()
        except FileNotFoundError:
            raw = b'{"tenants": []}'
        except OSError as exc:
            raise ConfigError(f"cannot read {self.tenants_path}: {exc.strerror}") from None
        try:
            stored = TenantTable.from_wire(json.loads(raw))
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise ConfigError(f"{self.tenants_path} is not a tenant table: {exc}") from None
        for tenant in stored.tenants.values():
            if tenant.name != ADMIN:
                tenants[tenant.name] = tenant
        return TenantTable(version, tenants)

    def save(self, table: TenantTable) -> None:
        """Write every tenant but the admin (whose credential is ``admin.token``)."""
        others = TenantTable(table.version, {
            name: t for name, t in table.tenants.items() if name != ADMIN})
        durable.write_file(self.tenants_path,
                      (json.dumps(others.to_wire(), indent=1) + "\n").encode())
