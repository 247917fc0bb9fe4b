"""Config: one place validates; errors name the key; flags override the file."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from kernelfarm import config as configuration
from kernelfarm.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "k.toml"
    path.write_text(text)
    return path


def test_the_committed_default_file_documents_every_key_with_its_default() -> None:
    assert (ROOT / "config" / "kernelfarm.toml").read_text() == configuration.render_defaults()
    loaded = configuration.load(ROOT / "config" / "kernelfarm.toml")
    assert loaded.to_dict() == configuration.load().to_dict()


@pytest.mark.parametrize("text, key", [
    ("[farm]\nkernals = 2\n", "farm.kernals"),
    ("[farm]\nkernels = 0\n", "farm.kernels"),
    ("[farm]\nkernels = \"many\"\n", "farm.kernels"),
    ("[farm]\nmode = \"smp\"\n", "farm.mode"),
    ("[farm]\ncontrol = \"localhost\"\n", "farm.control"),
    ("[rpc]\nmax_inflight = 0\n", "rpc.max_inflight"),
    ("[rpc]\nmax_inflight = \"10\"\n", "rpc.max_inflight"),
    ("[supervisor]\nheartbeat_interval = true\n", "supervisor.heartbeat_interval"),
    # nan passes every bound; inf overflows timers; an int past 64 bits failed every boot
    ("[supervisor]\nheartbeat_interval = nan\n", "supervisor.heartbeat_interval"),
    ("[supervisor]\nheartbeat_timeout = inf\n", "supervisor.heartbeat_timeout"),
    ("[rpc]\nmax_message_bytes = 99999999999999999999\n", "rpc.max_message_bytes"),
    ("[farm]\ndata_dir = \"\"\n", "farm.data_dir"),  # was the current directory
    ("[nosuch]\nx = 1\n", "nosuch"),
])
def test_bad_config_names_the_key(tmp_path: Path, text: str, key: str) -> None:
    with pytest.raises(ConfigError) as info:
        configuration.load(write(tmp_path, text))
    assert key in info.value.message and info.value.key == key


def test_a_list_key_of_the_wrong_item_type_says_what_it_takes(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        configuration.load(write(tmp_path, "[net]\nallow_ports = [80]\n"))
    assert info.value.message.endswith("net.allow_ports must be a list of strings, got [80]")


def test_invalid_toml_and_missing_file_are_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="invalid TOML"):
        configuration.load(write(tmp_path, "[farm\n"))
    with pytest.raises(ConfigError, match="not found"):
        configuration.load(tmp_path / "missing.toml")
    # Not text (a traceback before), and no end (read until memory ran out before).
    (tmp_path / "binary.toml").write_bytes(b"\xff\xfe[farm]\n")
    with pytest.raises(ConfigError, match="not UTF-8 text"):
        configuration.load(tmp_path / "binary.toml")
    with pytest.raises(ConfigError, match="larger than 1048576 bytes"):
        configuration.load("/dev/zero")
    assert configuration.check("/dev/zero")[0].message.startswith("/dev/zero: larger")


def test_flags_override_the_file_and_the_file_overrides_defaults(tmp_path: Path) -> None:
    path = write(tmp_path, "[farm]\nkernels = 3\nthreads = 4\n")
    loaded = configuration.load(path, {"farm": {"kernels": 5, "threads": None}})
    assert loaded.farm.kernels == 5          # flag beats file
    assert loaded.farm.threads == 4          # file beats default; an unset flag is no override
    assert loaded.rpc.max_inflight == configuration.RpcConfig().max_inflight


def test_config_is_frozen() -> None:
    loaded = configuration.load()
    with pytest.raises(AttributeError):
        setattr(loaded.farm, "kernels", 9)  # noqa: B010 - what a caller might try


def test_serve_refuses_a_bad_config_naming_the_key(tmp_path: Path) -> None:
    path = write(tmp_path, "[rpc]\nmax_inflight = -1\n")
    result = subprocess.run([sys.executable, "-m", "kernelfarm", "serve", "--config", str(path),
                             "--data-dir", str(tmp_path / "d")],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "rpc.max_inflight" in result.stderr


def test_serve_says_so_when_the_control_address_is_taken(tmp_path: Path) -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run([sys.executable, "-m", "kernelfarm", "serve", "--control",
                                 f"127.0.0.1:{port}", "--data-dir", str(tmp_path / "d")],
                                capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert f"cannot serve control on 127.0.0.1:{port}" in result.stderr
    assert "Traceback" not in result.stderr


def test_client_commands_say_so_when_no_daemon_answers() -> None:
    import socket

    with socket.socket() as placeholder:
        placeholder.bind(("127.0.0.1", 0))
        port = placeholder.getsockname()[1]   # bound, not listening: connections refused
        result = subprocess.run([sys.executable, "-m", "kernelfarm", "status", "--control",
                                 f"127.0.0.1:{port}"], capture_output=True, text=True,
                                timeout=60)
    assert result.returncode == 1
    assert "refused" in result.stderr.lower() and "Traceback" not in result.stderr


def test_from_dict_knows_every_section_in_a_fresh_process() -> None:
    """A kernel rebuilds its config with nothing else imported: no section may depend on
    who imported which subsystem first."""
    probe = ("from kernelfarm.config import Config; "
             "c = Config.from_dict({'fs': {'fsync': 'never'}, 'net': {'max_timeout': 1.0}}); "
             "print(c.fs.fsync, c.net.max_timeout)")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                         timeout=60)
    assert (out.returncode, out.stdout.split()) == (0, ["never", "1.0"]), out.stderr
