"""The tenant table as plain data: names, token hashes, grants.

The supervisor owns it (:mod:`.store` keeps it on disk) and pushes it to every kernel as
this wire form; nothing in it is secret beyond what a hash reveals, and nothing in it is
live state, so a kernel can swap tables in one assignment.
"""

from __future__ import annotations

import hmac
import re
from dataclasses import dataclass, field, replace
from typing import Any

from kernelfarm.auth.tokens import hash_token

ADMIN = "admin"
"""The admin tenant's name: it holds ``<data_dir>/admin.token`` and every grant."""

NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
MAX_PATTERN = 255
MAX_PATTERNS = 64


def check_name(name: Any) -> str:
    if not isinstance(name, str) or not NAME_RE.fullmatch(name):
        raise ValueError("a tenant name is 1-64 letters, digits, '_', '.' or '-', starting "
                         "with a letter or digit")
    return name


def check_patterns(patterns: Any, what: str) -> tuple[str, ...]:
    """Glob patterns (``alice``, ``alice-*``) as given; bad ones are ``ValueError``."""
    if not isinstance(patterns, (list, tuple)) or len(patterns) > MAX_PATTERNS:
        raise ValueError(f"{what} patterns must be a list of at most {MAX_PATTERNS}")
    for pattern in patterns:
        if (not isinstance(pattern, str) or not pattern or len(pattern) > MAX_PATTERN
                or "/" in pattern or "\0" in pattern):
            raise ValueError(f"{what} patterns are 1-{MAX_PATTERN} characters without '/' "
                             f"or NUL, got {pattern!r}")
    return tuple(patterns)


@dataclass(frozen=True)
class Tenant:
    name: str
    token_hash: str = field(repr=False)
    volumes: tuple[str, ...] = ()
    namespaces: tuple[str, ...] = ()
    admin: bool = False

    def describe(self) -> dict[str, Any]:
        """What ``tenant list`` shows: never the hash."""
        return {"name": self.name, "volumes": list(self.volumes),
                "namespaces": list(self.namespaces), "admin": self.admin}

    def to_wire(self) -> dict[str, Any]:
        return {**self.describe(), "token_hash": self.token_hash}

    @classmethod
    def from_wire(cls, data: dict[str, Any]) -> Tenant:
        token_hash = data["token_hash"]
        if not isinstance(token_hash, str) or len(token_hash) != 64:
            raise ValueError("token_hash must be a SHA-256 hex digest")
        return cls(check_name(data["name"]), token_hash,
                   check_patterns(data.get("volumes", []), "volume"),
                   check_patterns(data.get("namespaces", []), "namespace"),
                   bool(data.get("admin", False)))


@dataclass(frozen=True)
class TenantTable:
    """Every tenant by name; ``version`` grows with each change (kernels ignore older)."""

    version: int = 0
    tenants: dict[str, Tenant] = field(default_factory=dict)

    def identify(self, token: str) -> Tenant | None:
        """The tenant holding ``token``: every hash compared in constant time."""
        digest = hash_token(token)
        found = None
        for tenant in self.tenants.values():
            if hmac.compare_digest(tenant.token_hash, digest):
                found = tenant
        return found

    def with_tenant(self, tenant: Tenant) -> TenantTable:
        return replace(self, version=self.version + 1,
                       tenants={**self.tenants, tenant.name: tenant})

    def without(self, name: str) -> TenantTable:
        return replace(self, version=self.version + 1,
                       tenants={k: v for k, v in self.tenants.items() if k != name})

    def to_wire(self) -> dict[str, Any]:
        return {"version": self.version,
                "tenants": [t.to_wire() for t in self.tenants.values()]}

    @classmethod
    def from_wire(cls, data: dict[str, Any]) -> TenantTable:
        version = data.get("version", 0)
        if not isinstance(version, int) or isinstance(version, bool) or version < 0:
            raise ValueError("version must be a whole number >= 0")
        tenants = [Tenant.from_wire(t) for t in data.get("tenants", [])]
        return cls(version, {t.name: t for t in tenants})
