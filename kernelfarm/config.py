"""Typed, frozen configuration: every setting declared once, validated in one place.

A section is a frozen dataclass whose fields are made with :func:`setting` (default,
meaning, allowed values).  :func:`load` reads one TOML file, rejects unknown tables and
keys by name, checks every value's type, applies command-line overrides, and returns a
:class:`Config`.  It does no I/O beyond reading the file and never exits the process:
errors are :class:`~kernelfarm.errors.ConfigError` naming the offending key.
"""

from __future__ import annotations

import dataclasses
import difflib
import ipaddress
import math
import os
import tomllib
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from kernelfarm.auth.config import AuthConfig
from kernelfarm.auth.tokens import DEFAULT_DATA_DIR
from kernelfarm.errors import ConfigError
from kernelfarm.fs.config import FsConfig
from kernelfarm.hostport import parse_hostport
from kernelfarm.net.config import NetConfig
from kernelfarm.rpc.protocol import TURN_BYTES, TURN_SECONDS
from kernelfarm.settings import setting

DEFAULT_CONTROL = "127.0.0.1:7400"
DEFAULT_METRICS = "127.0.0.1:9400"
INT64 = 2**63
"""Integers must fit in 64 bits: the boot message carries the config to each kernel in
msgpack, which cannot encode more (every kernel then failed to boot)."""


def _check_kernels(value: Any) -> None:
    if value != "auto" and not (isinstance(value, int) and value >= 1):
        raise ValueError('must be "auto" or a whole number >= 1')


def _check_numeric_host(value: Any) -> None:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        raise ValueError(f"must be a numeric IP address (a kernel resolves no names), got "
                         f"{_toml_value(value)}") from None


def _check_hostport(value: Any) -> None:
    parse_hostport(value)


def _check_data_dir(value: Any) -> None:
    if not value.strip():  # `--data-dir "$UNSET"`: the farm wrote into the current directory
        raise ValueError("must name a directory, got an empty string")


@dataclass(frozen=True)
class FarmConfig:
    kernels: int | str = setting(
        "auto", 'number of kernel processes; "auto" = one per allowed core (more than the '
        "cores is allowed and pins round-robin)", check=_check_kernels)
    mode: Literal["partitioned", "locked"] = setting(
        "partitioned", "partitioned: N single-CPU kernels; locked: one kernel with N threads "
        "under locks (the baseline)")
    threads: int | str = setting(
        "auto", 'worker threads in locked mode; "auto" = one per allowed core',
        check=_check_kernels)
    locking: Literal["global", "fine"] = setting(
        "fine", "locked mode only: one big lock, or per-volume/per-namespace locks")
    data_dir: str = setting(DEFAULT_DATA_DIR, "where kernels keep their data",
                            check=_check_data_dir)
    control: str = setting(DEFAULT_CONTROL, "supervisor control address HOST:PORT (port 0 = "
                           "any free port)", check=_check_hostport)
    host: str = setting("127.0.0.1", "numeric address the kernels listen on (loopback by "
                        "default)", check=_check_numeric_host)


@dataclass(frozen=True)
class RpcConfig:
    max_message_bytes: int = setting(
        16 * 1024 * 1024, "largest msgpack-rpc message accepted; larger gets E2BIG",
        minimum=1024)
    max_inflight: int = setting(
        256, "requests in flight per connection before the server stops reading it",
        minimum=1)
    write_buffer_bytes: int = setting(
        4 * 1024 * 1024, "unsent reply bytes per connection before the server stops "
        "reading it (a client that does not read its replies)", minimum=4096)
    turn_bytes: int = setting(
        TURN_BYTES, "requests one connection is served per loop turn before the kernel's "
        "other connections are (at least one request; the rest follows next turn, in "
        "order)", minimum=1)
    turn_seconds: float = setting(
        TURN_SECONDS, "time one connection's requests are served per loop turn when a read "
        "holds more than 2 KiB of them (slow requests: volume creations)", minimum=0.0)
    max_connections: int = setting(
        2048, "client connections one kernel serves at once; one more is refused with "
        "EMFILE (lowered at boot if the host's descriptor limit has no room for it)",
        minimum=1)


@dataclass(frozen=True)
class SupervisorConfig:
    heartbeat_interval: float = setting(1.0, "seconds between pings of each kernel",
                                        minimum=0.01)
    heartbeat_timeout: float = setting(5.0, "a kernel that does not answer a ping for this "
                                       "long is killed and restarted, unless it shows it "
                                       "is busy, not hung (it comes back from blocking "
                                       "calls, waits on the disk, or is runnable and gets "
                                       "under half of its core)", minimum=0.05)
    boot_timeout: float = setting(15.0, "seconds a kernel may take to report ready, or "
                                  "between two progress reports while it loads its "
                                  "volumes (more while it shows it is busy, as for "
                                  "heartbeat_timeout)", minimum=0.1)
    boot_retries: int = setting(5, "consecutive failed boots before a kernel is marked "
                                "failed instead of restarted", minimum=1)
    restart_backoff: float = setting(0.1, "first delay before a restart; doubles per "
                                     "consecutive failure", minimum=0.0)
    restart_backoff_max: float = setting(5.0, "largest delay between restarts", minimum=0.0)
    shutdown_timeout: float = setting(5.0, "seconds a kernel gets to exit after SIGTERM "
                                      "before SIGKILL", minimum=0.1)
    scale_stall_timeout: float = setting(10.0, "a scaling step's call to a kernel that "
                                         "makes no progress for this long fails, and the "
                                         "step is rolled back and retried (progress: the "
                                         "kernel reports it, or the call's own work holds "
                                         "the kernel's loop); a kernel adopting a new slot "
                                         "table that long without progress is restarted "
                                         "with it", minimum=0.05)
    scale_batch_slots: int = setting(256, "slots moved per step when scaling live: each "
                                     "step pauses writes to its slots only", minimum=1)
    max_kernels: int = setting(0, "most kernels `scale` may ask for and `serve` may start "
                               "(or threads, in locked mode); 0 = four per allowed core "
                               "(never more than the 16384 slots)", minimum=0)


@dataclass(frozen=True)
class MetricsConfig:
    enabled: bool = setting(True, "serve Prometheus metrics at http://LISTEN/metrics (the "
                            "supervisor collects them from the kernels when scraped)")
    listen: str = setting(DEFAULT_METRICS, "metrics address HOST:PORT (port 0 = any free "
                          "port)", check=_check_hostport)
    max_tenants: int = setting(
        20, "tenants with series of their own in the kernelfarm_tenant_* metrics: the "
        'busiest by requests; the rest are summed as tenant="(other)"', minimum=0)


SECTIONS: dict[str, type] = {
    "farm": FarmConfig,
    "rpc": RpcConfig,
    "supervisor": SupervisorConfig,
    "auth": AuthConfig,
    "fs": FsConfig,
    "net": NetConfig,
    "metrics": MetricsConfig,
}
"""Every section, in the order the documented config lists them.  A subsystem declares its
section next to its code and it is listed here, so building a config never depends on
which modules were imported first."""


@dataclass(frozen=True)
class Config:
    """All sections; attribute access by section name (``config.farm.kernels``)."""

    sections: dict[str, Any]

    def __getattr__(self, name: str) -> Any:
        try:
            return self.__dict__["sections"][name]
        except KeyError:
            raise AttributeError(name) from None

    def to_dict(self) -> dict[str, dict[str, Any]]:
        return {name: dataclasses.asdict(sec) for name, sec in self.sections.items()}

    @classmethod
    def from_dict(cls, data: dict[str, dict[str, Any]]) -> Config:
        """Rebuild from :meth:`to_dict` (how a kernel process receives its config)."""
        return build(data, source="<boot>")


def _type_ok(value: Any, annotation: Any) -> bool:
    origin = typing.get_origin(annotation)
    if origin is Literal:
        return value in typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        return any(_type_ok(value, arm) for arm in typing.get_args(annotation))
    if origin in (list, tuple):
        (item, *_rest) = typing.get_args(annotation)
        return isinstance(value, (list, tuple)) and all(_type_ok(v, item) for v in value)
    if annotation is float:  # nan passes every bound and inf overflows a timer: neither
        return (isinstance(value, (int, float)) and not isinstance(value, bool)
                and math.isfinite(value))
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, annotation)


def _describe(annotation: Any) -> str:
    origin = typing.get_origin(annotation)
    if origin is Literal:
        return " or ".join(_toml_value(a) for a in typing.get_args(annotation))
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(a) for a in typing.get_args(annotation))
    if origin in (list, tuple):
        item = typing.get_args(annotation)[0]
        return "a list of " + {str: "strings", int: "integers"}.get(item, _describe(item))
    return {bool: "true or false", str: "a string", int: "an integer",
            float: "a finite number"}.get(annotation,
                                          getattr(annotation, "__name__", str(annotation)))


def _unknown(what: str, name: str, known: Any) -> str:
    """``unknown key farm.contrl (did you mean farm.control?)``"""
    close = difflib.get_close_matches(name.rsplit(".", 1)[-1], list(known), n=1)
    prefix = name.rsplit(".", 1)[0] + "." if "." in name else ""
    hint = f" (did you mean {prefix}{close[0]}?)" if close else ""
    return f"unknown {what} {name}{hint}"


def _build_section(name: str, cls: type, table: Any, source: str,
                   problems: list[ConfigError]) -> Any:
    """The section's dataclass from ``table``; each bad key adds to ``problems``."""
    if not isinstance(table, dict):
        problems.append(ConfigError(f"{source}: [{name}] must be a table", key=name))
        return cls()
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    values: dict[str, Any] = {}
    for key, value in table.items():
        where = f"{name}.{key}"
        if key not in fields:
            problems.append(ConfigError(f"{source}: {_unknown('key', where, fields)}",
                                        key=where))
            continue
        annotation = hints[key]
        if typing.get_origin(annotation) is tuple and isinstance(value, list):
            value = tuple(value)
        if not _type_ok(value, annotation):
            problems.append(ConfigError(f"{source}: {where} must be {_describe(annotation)}, "
                                        f"got {_toml_value(value)}", key=where))
            continue
        if type(value) is int and not -INT64 <= value < INT64:
            problems.append(ConfigError(f"{source}: {where} is out of range (a 64-bit "
                                        f"integer), got {_toml_value(value)}", key=where))
            continue
        meta = fields[key].metadata
        minimum = meta.get("minimum")
        if minimum is not None and isinstance(value, (int, float)) and value < minimum:
            problems.append(ConfigError(f"{source}: {where} must be >= {minimum}, got "
                                        f"{_toml_value(value)}", key=where))
            continue
        check = meta.get("check")
        if check is not None:
            try:
                check(value)
            except ValueError as exc:
                problems.append(ConfigError(f"{source}: {where} {exc}", key=where))
                continue
        values[key] = value
    return cls(**values)


def validate(data: dict[str, Any], source: str = "<config>"
             ) -> tuple[Config, list[ConfigError]]:
    """Every problem of a parsed TOML document, and the config its good keys make."""
    problems: list[ConfigError] = []
    for name in data:
        if name not in SECTIONS:
            problems.append(ConfigError(f"{source}: {_unknown('section', name, SECTIONS)}",
                                        key=name))
    sections = {name: _build_section(name, cls, data.get(name, {}), source, problems)
                for name, cls in SECTIONS.items()}
    config = Config(sections)
    farm = config.farm
    if farm.mode == "locked" and farm.kernels not in ("auto", 1):
        # Refused, not ignored: a locked farm is one kernel, so "--kernels 3" asked for
        # something it cannot be, and a warning in a log is easy to miss.
        problems.append(ConfigError(
            f"{source}: farm.kernels = {_toml_value(farm.kernels)} does not apply in locked "
            "mode, which runs ONE kernel with farm.threads threads (use --threads "
            f"{farm.kernels}, with --kernels 1 or auto)", key="farm.kernels"))
    return config, problems


def build(data: dict[str, Any], source: str = "<config>") -> Config:
    """Validate a parsed TOML document; missing sections and keys take their defaults."""
    config, problems = validate(data, source)
    if problems:
        raise problems[0]
    return config


MAX_CONFIG_BYTES = 1024 * 1024
"""Larger is not a config file (``--config /dev/zero`` read until memory ran out)."""


def read(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The parsed TOML document at ``path``; a missing, unreadable, oversized or invalid
    file is a ConfigError."""
    try:
        with open(path, "rb") as fh:
            data = fh.read(MAX_CONFIG_BYTES + 1)
        if len(data) > MAX_CONFIG_BYTES:
            raise ConfigError(f"{path}: larger than {MAX_CONFIG_BYTES} bytes, not a config file")
        return tomllib.loads(data.decode("utf-8"))
    except FileNotFoundError as exc:
        raise ConfigError(f"config file not found: {path}") from exc
    except IsADirectoryError as exc:
        raise ConfigError(f"{path}: is a directory, not a config file") from exc
    except OSError as exc:
        raise ConfigError(f"{path}: cannot be read: {exc.strerror or exc}") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text, as TOML must be: {exc.reason} at byte "
                          f"{exc.start}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: invalid TOML: {exc}") from exc


def check(path: str | os.PathLike[str]) -> list[ConfigError]:
    """Every problem of the file at ``path`` (``kernelfarm config --check``)."""
    try:
        data = read(path)
    except ConfigError as exc:
        return [exc]
    return validate(data, str(path))[1]


def load(path: str | os.PathLike[str] | None = None,
         overrides: dict[str, dict[str, Any]] | None = None) -> Config:
    """Read ``path`` (or take every default), then apply ``overrides`` from flags."""
    data: dict[str, Any] = {}
    source = "<defaults>"
    if path is not None:
        source = str(path)
        data = read(path)
    for section, values in (overrides or {}).items():
        merged = dict(data.get(section, {}))
        merged.update({k: v for k, v in values.items() if v is not None})
        data[section] = merged
    return build(data, source)


def describe_defaults() -> list[tuple[str, str, Any, str]]:
    """(section, key, default, help) for every setting: the documentation's source."""
    rows = []
    for name, cls in SECTIONS.items():
        for f in dataclasses.fields(cls):
            rows.append((name, f.name, f.default, f.metadata.get("help", "")))
    return rows


def data_path(config: Config) -> Path:
    return Path(os.path.expanduser(config.farm.data_dir))


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (tuple, list)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'


def render_defaults() -> str:
    """The documented default config: what ``config/kernelfarm.toml`` holds, key by key."""
    lines = ["# kernelfarm configuration: every key, its meaning, and its default.",
             "# Generated by `kernelfarm config`; command-line flags override this file.",
             "# Unknown keys are an error that names the key."]
    current = None
    for section, key, default, help_text in describe_defaults():
        if section != current:
            lines += ["", f"[{section}]"]
            current = section
        lines.append(f"# {help_text}")
        lines.append(f"{key} = {_toml_value(default)}")
    return "\n".join(lines) + "\n"
