"""Loading one volume from its directory, whatever damage it has.

One bad file never hides the whole volume: a volume that cannot be fully recovered is
served read-only from what can be read (``EROFS`` on changes), or, if even that fails,
refuses every call with ``EIO`` naming the damage; either way it is reported in
``kernel.stats`` (``fs.damaged``) and the log.  Only a volume whose name cannot be read
at all is left unserved (and reported by its directory).
"""

from __future__ import annotations

import logging
import os

from kernelfarm.fs.journal import Journal
from kernelfarm.fs.tree import Limits, Tree
from kernelfarm.fs.volume import Volume, find_name
from kernelfarm.steps import Steps

log = logging.getLogger(__name__)


def loading_volume(directory: str, limits: Limits,
                   unnamed: dict[str, str]) -> Steps[Volume | None]:
    """The volume of ``directory``, a step at a time; ``None`` if not even its name can
    be read (then ``unnamed[directory]`` says why)."""
    try:
        return (yield from Volume.loading(directory, limits))
    except Exception as exc:  # damage must neither stop the kernel nor hide the volume
        log.exception("%s: cannot recover this volume", directory)
        why = f"recovery failed: {exc}"
    name = find_name(directory)
    if name is None:
        log.error("%s: no readable volume name (name file and snapshot damaged); "
                  "not served", directory)
        unnamed[directory] = why
        return None
    try:
        volume = Volume.salvage(directory, name, why)
        log.error("volume %r: serving read-only what could be read: %s", name,
                  volume.read_only)
    except Exception as exc:
        log.error("volume %r: nothing can be read (%s); every call gets EIO", name, exc)
        volume = Volume(name, directory, Tree.new(name, 0, 0), Journal(os.devnull, 0),
                        -1, 0)
        volume.failed = f"{why}; salvage failed: {exc}"
    return volume
