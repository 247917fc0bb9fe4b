"""The ``[fs]`` configuration section: durability policy and size limits."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from kernelfarm.settings import setting

MIB = 1024 * 1024


@dataclass(frozen=True)
class FsConfig:
    fsync: Literal["always", "batch", "never"] = setting(
        "always", "always: a write is acknowledged only after its journal record was fsynced "
        "(one fsync per volume per loop turn, shared by every write of that turn); batch: "
        "journal written every turn, fsynced every batch_interval_ms (a host crash may lose "
        "that much); never: journal written every turn, never fsynced (survives a kernel "
        "crash, not a host crash)")
    batch_interval_ms: int = setting(
        5, "milliseconds between fsyncs when fsync = \"batch\"", minimum=1)
    max_file_bytes: int = setting(
        64 * MIB, "largest size of one file; a write or truncate past it fails with EFBIG",
        minimum=0)
    volume_quota_bytes: int = setting(
        1024 * MIB, "bytes of file data (and symlink targets) one volume may hold; a write "
        "past it fails with EDQUOT", minimum=0)
    volume_max_inodes: int = setting(
        1_000_000, "files, directories and symlinks one volume may hold; creating more "
        "fails with EDQUOT", minimum=1)
    snapshot_journal_bytes: int = setting(
        64 * MIB, "a volume whose journal grows past this many bytes (and past the size of "
        "its last snapshot) is snapshotted and its journal restarted; bounds restart time",
        minimum=1)
    reserve_bytes: int = setting(
        64 * MIB, "free bytes kept on the data dir's file system: a change that would leave "
        "less fails with ENOSPC before it is made (reads and the journal's last writes go "
        "on; unlink and rmdir may use half of it, so a full data dir can be emptied); 0 "
        "turns the check off", minimum=0)
    open_journals: int = setting(
        256, "journal files a kernel keeps open; a volume beyond that reopens its journal "
        "when it next writes (bounds file descriptors with many volumes)", minimum=1)
