"""The farm's tenants as the supervisor keeps them: on disk, at the control port, in kernels.

Every change (``tenant.add``, ``remove``, ``rotate``, a SIGHUP reload) is made durable
first, then handed to whoever serves connections (the control port's gate and every
kernel), and only then answered: when ``kernelfarm tenant ...`` returns, the farm already
applies it.  A token is shown once, in the answer to ``add`` or ``rotate``; only its hash
is kept.
"""

from __future__ import annotations

import errno
import logging
from typing import Any, Awaitable, Callable

from kernelfarm import durable
from kernelfarm.auth.store import TenantStore, admin_tenant
from kernelfarm.auth.table import Tenant, TenantTable, check_name, check_patterns
from kernelfarm.auth.tokens import hash_token, new_token
from kernelfarm.errors import posix

log = logging.getLogger("kernelfarm.supervisor")

Publish = Callable[[TenantTable], Awaitable[None]]


class TenantRegistry:
    def __init__(self, store: TenantStore, publish: Publish) -> None:
        self.store = store
        self.table = TenantTable()
        self._publish = publish

    def open(self) -> None:
        """Load the table; the first serve on a data dir makes its admin token."""
        if self.store.ensure_admin_token():
            log.info("created the admin token %s (mode 0600)", self.store.admin_path)
        self.table = self.store.load()

    async def _apply(self, table: TenantTable) -> None:
        self.table = table
        await self._publish(table)

    async def add(self, name: Any, volumes: Any = (), namespaces: Any = ()
                  ) -> dict[str, Any]:
        name = check_name(name)
        if name in self.table.tenants:
            raise posix(errno.EEXIST, f"tenant {name!r} exists")
        token = new_token()
        tenant = Tenant(name, hash_token(token), check_patterns(volumes, "volume"),
                        check_patterns(namespaces, "namespace"))
        table = self.table.with_tenant(tenant)
        self.store.save(table)
        log.info("tenant %s added: volumes %s, namespaces %s", name, list(tenant.volumes),
                 list(tenant.namespaces))
        await self._apply(table)
        return {"tenant": name, "token": token}

    async def remove(self, name: Any) -> dict[str, Any]:
        tenant = self._existing(name)
        if tenant.admin:
            raise posix(errno.EPERM, "the admin tenant cannot be removed")
        table = self.table.without(tenant.name)
        self.store.save(table)
        log.info("tenant %s removed", tenant.name)
        await self._apply(table)
        return {"tenant": tenant.name, "removed": True}

    async def rotate(self, name: Any) -> dict[str, Any]:
        """A new token for ``name``; connections made with the old one are cut."""
        tenant = self._existing(name)
        token = new_token()
        if tenant.admin:
            durable.write_file(self.store.admin_path, (token + "\n").encode())
            table = self.table.with_tenant(admin_tenant(hash_token(token)))
        else:
            table = self.table.with_tenant(Tenant(tenant.name, hash_token(token),
                                                  tenant.volumes, tenant.namespaces))
            self.store.save(table)
        log.info("tenant %s has a new token", tenant.name)
        await self._apply(table)
        return {"tenant": tenant.name, "token": token}

    def list(self) -> list[dict[str, Any]]:
        return [t.describe() for t in sorted(self.table.tenants.values(),
                                             key=lambda t: t.name)]

    async def reload(self) -> None:
        """SIGHUP: read the table from disk again (an operator edited or restored it)."""
        try:
            table = self.store.load(self.table.version + 1)
        except Exception as exc:
            log.error("SIGHUP: tenants not reloaded, the current table stays: %s", exc)
            return
        log.info("SIGHUP: %d tenants reloaded from %s", len(table.tenants),
                 self.store.tenants_path)
        await self._apply(table)

    def _existing(self, name: Any) -> Tenant:
        tenant = self.table.tenants.get(check_name(name))
        if tenant is None:
            raise posix(errno.ENOENT, f"no tenant {name!r}")
        return tenant

