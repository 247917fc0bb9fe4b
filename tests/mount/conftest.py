"""One farm for the mount tests, one mount per module (starting them costs seconds), and a local
source tree the program tests copy around."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Iterator

import pytest
from mountctl import Mount, mounted

from farmctl import Farm, start_farm

FARM_CONFIG = """
[fs]
max_file_bytes = 8388608
volume_quota_bytes = 268435456
"""
"""8 MiB files (so EFBIG is cheap to reach), 256 MiB per volume."""


@pytest.fixture(scope="package")
def farm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Farm]:
    with start_farm(tmp_path_factory.mktemp("farm"), 2, config_text=FARM_CONFIG) as farm:
        yield farm


@pytest.fixture(scope="module")
def mount(farm: Farm, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mount]:
    with mounted(farm, tmp_path_factory.mktemp("mnt") / "mp") as mount:
        yield mount


@pytest.fixture(scope="module")
def source_tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real source tree (this project's package), without byte-code caches."""
    root = tmp_path_factory.mktemp("src") / "kernelfarm"
    shutil.copytree(Path(__file__).parents[2] / "kernelfarm", root,
                    ignore=shutil.ignore_patterns("__pycache__"))
    (root / "a link").symlink_to("mount/operations.py")
    (root / "empty dir").mkdir()
    (root / "mount" / "operations.py").chmod(0o600)
    return root
