"""Writers that record what the farm acknowledged, and the check after a power cut.

Every change a writer makes is a set of ``path -> value`` (a file's bytes, ``DIR`` for a
directory or volume, ``None`` for absent).  Before the call, each new value becomes
*possible*; when the call is acknowledged it becomes the *only* allowed value.  A call cut
by the power cut stays unacknowledged: both the old and the new value are allowed.  After
the cut, :meth:`Model.verify` reads every path and reports each one whose value is not
allowed (a lost acknowledged write), then takes what it read as the new truth.
"""

from __future__ import annotations

import errno
import random
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable

import kernelfarm
from kernelfarm.client.routing import RetryPolicy
from kernelfarm.errors import ConnectionLost, Timeout, TryAgain

DIR = "dir"
CUT_OFF = (ConnectionLost, ConnectionError, TryAgain, Timeout)
"""What a writer sees when the power goes: its call is then unacknowledged."""
RETRY = RetryPolicy(deadline_s=3.0)


@dataclass
class Loss:
    path: str
    found: Any
    allowed: list[Any]
    acked_at: float


class Model:
    def __init__(self) -> None:
        self.allowed: dict[str, list[Any]] = {}
        self.acked_at: dict[str, float] = {}
        self._lock = threading.Lock()  # writers are threads of the test, not of a kernel

    def value(self, path: str) -> Any:
        with self._lock:
            values = self.allowed.get(path, [None])
            assert len(values) == 1, (path, values)
            return values[0]

    def begin(self, changes: dict[str, Any]) -> None:
        with self._lock:
            for path, value in changes.items():
                self.allowed.setdefault(path, [None]).append(value)

    def ack(self, changes: dict[str, Any]) -> None:
        now = time.monotonic()
        with self._lock:
            for path, value in changes.items():
                self.allowed[path] = [value]
                self.acked_at[path] = now

    def verify(self, client: kernelfarm.Client) -> list[Loss]:
        losses = []
        for path, allowed in sorted(self.allowed.items()):
            found = read(client, path)
            if found not in allowed:
                losses.append(Loss(path, found, allowed, self.acked_at.get(path, 0.0)))
            self.allowed[path] = [found]
        return losses


def read(client: kernelfarm.Client, path: str) -> Any:
    try:
        if client.fs.stat(path)["type"] == "dir":
            return DIR
        return client.fs.read_file(path)
    except FileNotFoundError:
        return None
    except NotADirectoryError:
        return None


class Writer(threading.Thread):
    """One client making changes in turn until stopped or cut off; ``step`` makes one."""

    def __init__(self, control: tuple[str, int], model: Model, tag: str,
                 steps: Callable[[Writer, int], None]) -> None:
        super().__init__(name=f"writer-{tag}", daemon=True)
        self.control, self.model, self.tag, self.steps = control, model, tag, steps
        self.client = kernelfarm.Client(control, retry=RETRY)
        self.acks = 0
        self.errors: list[str] = []
        self.stop = threading.Event()
        self.rng = random.Random(tag)

    def change(self, changes: dict[str, Any], call: Callable[[], Any]) -> None:
        self.model.begin(changes)
        call()
        self.model.ack(changes)
        self.acks += 1

    def run(self) -> None:
        n = 0
        try:
            while not self.stop.is_set():
                self.steps(self, n)
                n += 1
        except CUT_OFF:
            pass  # the power went: this call is unacknowledged, and the writer is done
        except OSError as exc:
            if exc.errno != errno.EIO:  # EIO: the journal's disk is gone, also the cut
                self.errors.append(f"{self.tag} #{n}: {exc!r}")
        except Exception as exc:  # noqa: BLE001 - anything else fails the test
            self.errors.append(f"{self.tag} #{n}: {exc!r}")
        finally:
            self.client.close()


def files_step(volume: str, round_no: int) -> Callable[[Writer, int], None]:
    """New files, appends to a log, install-by-rename, unlinks and mkdirs in ``volume``."""

    def step(w: Writer, n: int) -> None:
        fs, base = w.client.fs, f"/{volume}/{w.tag}"
        data = f"{w.tag}:{round_no}:{n};".encode() * w.rng.randint(1, 40)
        kind = n % 5
        if kind == 0:
            new = f"{base}-f{round_no}-{n}"
            w.change({new: data}, lambda: fs.write_file(new, data))
        elif kind == 1:
            log = f"{base}-log"
            old = w.model.value(log)
            if old is None:
                w.change({log: data}, lambda: fs.write_file(log, data))
            else:
                w.change({log: old + data}, lambda: fs.pwrite(log, len(old), data))
        elif kind == 2:
            tmp, latest = f"{base}-tmp", f"{base}-latest"
            w.change({tmp: data}, lambda: fs.write_file(tmp, data))
            w.change({tmp: None, latest: data}, lambda: fs.rename(tmp, latest))
        elif kind == 3:
            old_file = f"{base}-f{round_no}-{n - 13}"
            if w.model.value(old_file) is not None:
                w.change({old_file: None}, lambda: fs.unlink(old_file))
        else:
            new = f"{base}-d{round_no}-{n}"
            w.change({new: DIR}, lambda: fs.mkdir(new))

    return step


def volumes_step(prefix: str) -> Callable[[Writer, int], None]:
    """Volumes created, written, emptied and destroyed, over and over."""

    def step(w: Writer, n: int) -> None:
        fs = w.client.fs
        volume, k = f"/{prefix}-{n // 4}", n % 4
        if k == 0:
            w.change({volume: DIR}, lambda: fs.mkdir(volume))
        elif k == 1:
            w.change({f"{volume}/f": b"x" * n}, lambda: fs.write_file(f"{volume}/f", b"x" * n))
        elif k == 2:
            w.change({f"{volume}/f": None}, lambda: fs.unlink(f"{volume}/f"))
        else:
            w.change({volume: None}, lambda: fs.rmdir(volume))

    return step
