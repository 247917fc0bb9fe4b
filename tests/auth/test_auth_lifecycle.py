"""Tenants over a farm's life: the first serve's admin token, auth switched off, the CLI,
SIGHUP, scale-out (new kernels learn the tenants and are off limits to namespaces), and
tokens never showing up in logs, status or errors."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import stat
import subprocess
import sys
from pathlib import Path

import pytest

import kernelfarm
import kernelfarm.aio
from farmctl import ADMIN_TOKEN, Farm, start_farm, stop_process, wait_until
from kernelfarm.auth.tokens import TOKEN_ENV
from kernelfarm.partition import key_slot
from kernelfarm.supervisor import launch
from raw_rpc import RawConnection

WIDE_OPEN = '[net]\nallow = ["0.0.0.0/0", "::/0"]\n'


def cli(farm: Farm, *args: str, token_file: Path | None = None,
        env_token: str | None = None) -> subprocess.CompletedProcess[str]:
    """``kernelfarm ARGS`` as the admin (found in the farm's data dir through ``--config``),
    or with ``--token-file``, or with ``$KERNELFARM_TOKEN``."""
    env = dict(os.environ)
    env.pop(TOKEN_ENV, None)
    if env_token is not None:
        env[TOKEN_ENV] = env_token
    if token_file is not None:
        extra = ["--token-file", str(token_file)]
    else:
        config = farm.data_dir.parent / "client.toml"
        config.write_text(f'[farm]\ndata_dir = "{farm.data_dir}"\n')
        extra = ["--config", str(config)]
    return subprocess.run([sys.executable, "-m", "kernelfarm", *args, "--control",
                           farm.control_str, *extra], capture_output=True, text=True,
                          env=env, timeout=60)


def test_the_first_serve_makes_the_admin_token_and_later_ones_keep_it(
        tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    tokens = []
    for run in range(2):
        log_path = tmp_path / f"serve{run}.log"
        proc = launch.spawn(["--data-dir", str(data_dir), "--kernels", "1"],
                            log_path=log_path)
        try:
            ready = launch.wait_ready(proc, log_path)
            path = data_dir / "admin.token"
            assert stat.S_IMODE(path.stat().st_mode) == 0o600
            text = path.read_text()
            assert text.endswith("\n") and text.count("\n") == 1 and len(text) > 43
            tokens.append(text.strip())
            with RawConnection(ready["control"]) as control:
                assert control.code("cluster.status") == "NOAUTH"
                assert control.call("auth.hello", tokens[-1])[1]["admin"] is True
                assert control.code("cluster.status") is None
        finally:
            stop_process(proc)
        assert tokens[-1] not in log_path.read_text()
    assert tokens[0] == tokens[1]


def test_auth_off_lets_every_connection_in_and_serve_says_so(tmp_path: Path) -> None:
    with start_farm(tmp_path, 1, config_text="[auth]\nrequired = false\n") as farm:
        with RawConnection(farm.control) as control:
            assert control.code("cluster.status") is None
            assert control.code("auth.hello", "wrong") == "EACCES"
        kernel = farm.cluster_map()["kernels"][0]["addr"]
        with RawConnection(kernel) as conn:
            assert conn.code("fs.mkdir", "/open") is None
            assert conn.call("fs.listdir", "/")[1] == ["open"]
        assert "required = false" in farm.log()


def test_the_tenant_cli_and_token_files(tmp_path: Path) -> None:
    with start_farm(tmp_path, 2) as farm:
        added = cli(farm, "tenant", "add", "erin", "--volume", "erin", "erin-*",
                    "--namespace", "erin")
        assert added.returncode == 0, added.stderr
        token = added.stdout.strip().splitlines()[-1]
        assert len(token) >= 43 and " " not in token
        token_file = tmp_path / "erin.token"
        token_file.write_text(token + "\n")
        listed = cli(farm, "tenant", "list")
        assert "erin" in listed.stdout and "erin-*" in listed.stdout
        assert token not in listed.stdout
        assert cli(farm, "fs", "mkdir", "/erin", token_file=token_file).returncode == 0
        assert cli(farm, "fs", "mkdir", "/admins").returncode == 0
        ls = cli(farm, "fs", "ls", "/", token_file=token_file)
        assert ls.stdout.split() == ["erin"]
        assert cli(farm, "fs", "ls", "/", env_token=token).stdout.split() == ["erin"]
        assert cli(farm, "fs", "ls", "/").stdout.split() == ["admins", "erin"]
        refused = cli(farm, "fs", "ls", "/admins", token_file=token_file)
        assert refused.returncode == 1 and "ermission denied" in refused.stderr
        assert token not in refused.stderr
        scale = cli(farm, "scale", "1", token_file=token_file)
        assert scale.returncode != 0 and "admin" in scale.stderr
        rotated = cli(farm, "tenant", "rotate", "erin")
        new_token = rotated.stdout.strip().splitlines()[-1]
        assert new_token != token
        assert cli(farm, "fs", "ls", "/", token_file=token_file).returncode == 1
        assert cli(farm, "fs", "ls", "/", env_token=new_token).stdout.split() == ["erin"]
        status = cli(farm, "status", "--json")
        assert status.returncode == 0
        assert cli(farm, "tenant", "remove", "erin").returncode == 0
        assert cli(farm, "fs", "ls", "/", env_token=new_token).returncode == 1
        assert "erin" not in cli(farm, "tenant", "list").stdout
        wrong = cli(farm, "status", env_token="not-a-token")
        assert wrong.returncode != 0 and "not-a-token" not in wrong.stderr
        for secret in (token, new_token, ADMIN_TOKEN):
            assert secret not in status.stdout
            assert secret not in farm.log()
            assert secret not in (farm.data_dir / "tenants.json").read_text()


def test_sighup_reloads_the_tenants_from_disk(tmp_path: Path) -> None:
    with start_farm(tmp_path, 1) as farm:
        admin = farm.client()
        token = admin.control_call("tenant.add", "frank", ["frank"], [])["token"]
        saved = (farm.data_dir / "tenants.json").read_bytes()
        admin.control_call("tenant.remove", "frank")
        with pytest.raises(PermissionError):
            kernelfarm.Client(farm.control, token=token)
        (farm.data_dir / "tenants.json").write_bytes(saved)  # an operator restores it
        farm.proc.send_signal(signal.SIGHUP)

        def frank_is_back() -> bool:
            try:
                with kernelfarm.Client(farm.control, token=token) as frank:
                    frank.fs.listdir("/")
                    return True
            except PermissionError:
                return False

        wait_until(frank_is_back, what="frank's token to work again after SIGHUP")
        assert "frank" in [t["name"] for t in admin.control_call("tenant.list")]
        (farm.data_dir / "tenants.json").write_text("{not json")
        farm.proc.send_signal(signal.SIGHUP)
        wait_until(lambda: "tenants not reloaded" in farm.log(), what="the reload error")
        assert frank_is_back()  # a broken file changes nothing
        assert farm.proc.poll() is None


def test_scale_out_new_kernels_know_the_tenants_and_are_off_limits(tmp_path: Path) -> None:
    names = [f"gina{i}" for i in range(24)]
    with start_farm(tmp_path, 1, config_text=WIDE_OPEN) as farm:
        admin = farm.client()
        token = admin.control_call("tenant.add", "gina", ["gina*"], ["gina*"])["token"]

        async def as_gina(scale: bool) -> list[bytes]:
            async with kernelfarm.aio.Client(farm.control, token=token) as gina:
                if not scale:
                    for name in names:
                        await gina.fs.mkdir(f"/{name}")
                        await gina.fs.write_file(f"/{name}/f", name.encode())
                    return []
                admin.scale(2)  # the client's connection to kernel 0 stays open
                return [await gina.fs.read_file(f"/{name}/f") for name in names]

        asyncio.run(as_gina(scale=False))
        read = asyncio.run(as_gina(scale=True))
        assert read == [name.encode() for name in names]
        kernels = farm.cluster_map()["kernels"]
        assert len(kernels) == 2
        new = kernels[1]["addr"]
        admin.refresh()
        with kernelfarm.Client(farm.control, token=token) as gina:
            for kernel in kernels:
                ns = next(n for n in (f"gina-ns{i}" for i in range(1000))
                          if admin.router.table.owner(key_slot(n)) == kernel["id"])
                for host, port in [new, kernels[0]["addr"], farm.control]:
                    with gina.net.socket(ns, "tcp") as sock, \
                            pytest.raises(PermissionError):
                        sock.connect(host, port)
        moved = json.dumps(farm.cluster_map())
        assert token not in moved
