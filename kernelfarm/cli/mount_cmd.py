"""``kernelfarm mount MOUNTPOINT`` and ``kernelfarm umount MOUNTPOINT``: the farm through FUSE.

The mount needs the ``mount`` extra (``pip install 'kernelfarm[mount]'``, which builds
pyfuse3 against libfuse 3: apt ``fuse3 libfuse3-dev pkg-config``); the command says so
instead of failing with an import traceback.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import subprocess
import sys
import time

from kernelfarm.cli.common import add_client_options, client_token, control_address
from kernelfarm.mount.mtab import FS_TYPE, fs_type, is_mounted

UNMOUNT_DEADLINE_S = 10.0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser("mount", help="mount the farm's volumes (FUSE)")
    parser.add_argument("mountpoint", metavar="MOUNTPOINT")
    add_client_options(parser)
    parser.add_argument("--foreground", "-f", action="store_true",
                        help="stay in the foreground (default: daemonize once mounted)")
    parser.add_argument("--read-only", action="store_true", help="mount read-only")
    parser.set_defaults(handler=run_mount)
    parser = sub.add_parser("umount", help="unmount a kernelfarm mount")
    parser.add_argument("mountpoint", metavar="MOUNTPOINT")
    parser.set_defaults(handler=run_umount)


def run_mount(args: argparse.Namespace) -> int:
    try:
        from kernelfarm.mount import runner
    except ImportError as exc:
        print(f"kernelfarm mount: {exc}; install the mount extra: "
              "pip install 'kernelfarm[mount]' (needs apt fuse3 libfuse3-dev pkg-config)",
              file=sys.stderr)
        return 2
    mountpoint = os.path.abspath(args.mountpoint)
    if fs_type(mountpoint) == FS_TYPE:  # first: a dead mount's stat fails with ENOTCONN
        # A second mount would hide the first, and `umount` would then unmount only the
        # top one and report the mount point still mounted.
        print(f"kernelfarm mount: {args.mountpoint}: already a kernelfarm mount "
              "(kernelfarm umount it first)", file=sys.stderr)
        return 1
    if not os.path.isdir(mountpoint):
        print(f"kernelfarm mount: {args.mountpoint}: not a directory", file=sys.stderr)
        return 2
    options = runner.MountOptions(mountpoint, control_address(args), args.read_only,
                                  token=client_token(args))
    if not args.foreground:
        return runner.run_daemon(options)
    logging.basicConfig(level=logging.WARNING, format="kernelfarm mount: %(message)s")
    runner.run(options)
    return 0


def run_umount(args: argparse.Namespace) -> int:
    """``fusermount3 -u``; the mount process sends its pending writes and exits.  Also
    clears the mount point of a mount process that died.  Anything else mounted there is
    left alone: as root, ``fusermount3 -u`` unmounts whatever it is given (``/proc``, a
    tmpfs), and a mistyped path must not take a file system away."""
    mountpoint = os.path.abspath(args.mountpoint)
    mounted = fs_type(mountpoint)
    if mounted is None:
        print(f"kernelfarm umount: {args.mountpoint}: not mounted", file=sys.stderr)
        return 1
    if mounted != FS_TYPE:
        print(f"kernelfarm umount: {args.mountpoint}: not a kernelfarm mount ({mounted}); "
              "left alone", file=sys.stderr)
        return 1
    tool = shutil.which("fusermount3") or shutil.which("fusermount")
    command = [tool, "-u", mountpoint] if tool else ["umount", mountpoint]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        print(f"kernelfarm umount: {result.stderr.strip() or 'failed'}", file=sys.stderr)
        return 1
    deadline = time.monotonic() + UNMOUNT_DEADLINE_S
    while is_mounted(mountpoint):
        if time.monotonic() > deadline:
            print(f"kernelfarm umount: {args.mountpoint} is still mounted", file=sys.stderr)
            return 1
        time.sleep(0.05)
    return 0
