"""Atomic writes leave ordinary files and folders (permissions from the umask, not mkstemp's 0600)."""

from __future__ import annotations

import os
import stat
import sys

from mtgraft.utils import atomic_dir, atomic_file


def test_atomic_outputs_follow_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        with atomic_file(tmp_path / "a.json", "w") as f:
            f.write("{}")
        with atomic_dir(tmp_path / "run") as d:
            (d / "x.txt").write_text("x")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "a.json").stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "run").stat().st_mode) == 0o755
    assert (tmp_path / "run" / "x.txt").read_text() == "x"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json", "run"]  # no temporary left behind


def test_release_freed_memory_is_safe_to_call_repeatedly():
    import torch

    from mtgraft.utils import release_freed_memory

    x = torch.ones(1 << 20)
    del x
    assert release_freed_memory() is None
    assert release_freed_memory() is None  # the libc lookup is cached; the second call takes the same path
    if sys.platform.startswith("linux"):  # glibc's malloc_trim was found, so the calls above did release memory
        from mtgraft import utils

        assert callable(utils._MALLOC_TRIM)
