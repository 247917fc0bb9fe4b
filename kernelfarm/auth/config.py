"""The ``[auth]`` config section."""

from __future__ import annotations

from dataclasses import dataclass

from kernelfarm.settings import setting


@dataclass(frozen=True)
class AuthConfig:
    required: bool = setting(
        True, "every connection must say who it is (auth.hello) before other calls; false "
        "lets anyone on the host use everything (trusted single-user hosts, benchmarks)")
