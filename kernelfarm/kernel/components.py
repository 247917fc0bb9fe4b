"""The subsystems a kernel is composed of, in the order they are started."""

from __future__ import annotations

from kernelfarm.fs.subsystem import FsSubsystem
from kernelfarm.kernel.subsystem import Subsystem
from kernelfarm.net.subsystem import NetSubsystem

SUBSYSTEMS: list[type[Subsystem]] = [FsSubsystem, NetSubsystem]
