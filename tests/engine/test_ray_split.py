"""How the Ray engine splits records between nodes: in proportion, and between WebDataset shards."""

from __future__ import annotations

from pathlib import Path

from autotune.data import make_dataset
from autotune.data.sources import open_source
from autotune.engine.ray_runner import _split


def test_shards_go_whole_to_one_node(tmp_path: Path) -> None:
    make_dataset(tmp_path / "shards", n=40, seed=3, format="webdataset", shard_images=10)
    source = open_source(tmp_path / "shards")
    recs = source.records()
    units = [source.work_unit(r) for r in recs]
    assert len(set(units)) == 4 and units == sorted(units)  # four shards, their records consecutive
    plain = _split(recs, [1.0, 1.0, 1.0])  # 40 / 3: cuts inside shards
    assert plain == [(0, 13), (13, 27), (27, 40)]
    ranges = _split(recs, [1.0, 1.0, 1.0], source.work_unit)
    assert ranges[0][0] == 0 and ranges[-1][1] == 40
    assert all(a[1] == b[0] for a, b in zip(ranges, ranges[1:], strict=False))  # every record once
    for lo, hi in ranges:  # each cut at a shard boundary: no shard is read by two nodes
        assert lo in (0, 10, 20, 30, 40) and hi in (0, 10, 20, 30, 40)
    assert sorted(hi - lo for lo, hi in ranges) == [10, 10, 20]
    # A folder has no units: the split is the plain one.
    make_dataset(tmp_path / "files", n=40, seed=3)
    folder = open_source(tmp_path / "files")
    assert _split(folder.records(), [1.0, 1.0, 1.0], folder.work_unit) == plain
