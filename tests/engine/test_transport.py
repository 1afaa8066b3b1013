"""Shared-memory segments: named by their creator's pid, removable after it dies, without tracker noise."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from autotune.engine.transport import SHM_PREFIX, SlotPool, segment_names, segment_prefix

# Run in a fresh interpreter: the resource tracker reports leaks (and double unlinks) only when it exits,
# and its warnings go to the stderr of the process that started it.
_KILLED_CREATOR = '''
import multiprocessing as mp
import os
import sys
import time

from autotune.engine.transport import SlotPool, remove_segments, segment_prefix


def hold(names):
    """Create a slot pool, say its name, then wait to be killed."""
    pool = SlotPool.create(slots=1, capacity=1, height=8, width=8)
    names.put(pool.layout.name)
    time.sleep(60)


if __name__ == "__main__":
    ctx = mp.get_context("spawn")
    names = ctx.Queue()
    child = ctx.Process(target=hold, args=(names,))
    child.start()
    name = names.get(timeout=60)
    child.kill()
    child.join()
    assert name.startswith(segment_prefix(child.pid)), name
    assert os.path.exists(f"/dev/shm/{name}"), name
    print(remove_segments(child.pid), os.path.exists(f"/dev/shm/{name}"))
'''


def test_segments_carry_the_creator_pid() -> None:
    """A pool's segment is named after this process, and only this process's prefix matches it."""
    pool = SlotPool.create(slots=1, capacity=1, height=8, width=8)
    try:
        name = pool.layout.name
        assert name.startswith(segment_prefix(os.getpid())) and name.startswith(SHM_PREFIX)
        assert name in segment_names(os.getpid())
        assert not name.startswith(segment_prefix(int(str(os.getpid())[:-1] or 1)))  # pid 12 is not pid 123
    finally:
        pool.close()
    assert name not in segment_names(os.getpid())


def test_segments_of_a_killed_creator_are_removed_without_tracker_warnings(tmp_path: Path) -> None:
    """remove_segments unlinks a SIGKILLed creator's segment, and the resource tracker stays quiet at exit."""
    script = tmp_path / "killed_creator.py"
    script.write_text(_KILLED_CREATOR)
    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(root), os.environ.get("PYTHONPATH")]))}
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120, env=env)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["1", "False"]
    # Without unregistering, the tracker would warn about a leaked segment and fail to unlink it again.
    assert "resource_tracker" not in done.stderr and "leaked" not in done.stderr, done.stderr
    assert done.stderr.strip() == ""


def test_orphan_segments_of_dead_creators_are_swept() -> None:
    """A segment whose creator died with its resource tracker is removed by the next sweep; live ones stay."""
    import subprocess
    import sys

    from autotune.engine.transport import SHM_DIR, remove_orphan_segments, segment_prefix

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    orphan = SHM_DIR / f"{segment_prefix(int(dead.stdout))}feedbeef"
    mine = SHM_DIR / f"{segment_prefix(os.getpid())}feedbeef"
    orphan.write_bytes(b"\0" * 16)
    mine.write_bytes(b"\0" * 16)
    try:
        assert remove_orphan_segments() >= 1
        assert not orphan.exists() and mine.exists()
    finally:
        orphan.unlink(missing_ok=True)
        mine.unlink(missing_ok=True)
