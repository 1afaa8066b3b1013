"""The prepared GPU check: its dry run (the real check's code at CPU sizes) and how it records failures."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from autotune.bench.gpu_check import STAGES, _run_stage, bottleneck_breakdown, run_gpu_check
from autotune.data import RepeatedSource, open_source

ROOT = Path(__file__).resolve().parents[2]


def _dry_run(tmp_path: Path, *extra: str) -> tuple[subprocess.CompletedProcess[str], dict[str, Any]]:
    """``bench gpu-check --dry-run`` in its own process; its exit, and every stage's JSON that it wrote."""
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run(
        [sys.executable, "-m", "autotune.cli", "bench", "gpu-check", "--dry-run", "--out", str(out), "--json", *extra],
        capture_output=True, text=True, env=env, cwd=tmp_path,
    )  # fmt: skip
    stages = {p.stem: json.loads(p.read_text()) for p in out.glob("*.json") if p.stem != "summary"}
    for name, record in stages.items():
        assert record["ok"], f"{name}: {record.get('error')}\n{record.get('stderr_tail', '')}"
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc, stages


# The stages the GPU retrieval depends on, at CPU sizes (tiny model, 64 images, one trial): the check's own
# orchestration end to end (each stage a process, its JSON, the summary, the study's profile used by retrieve).
# The ladder and decode stages are the `bench ladder` and placement code that their own tests cover; the whole
# dry run is `slow` below. Wall time follows the machine's load: the timeout only catches a hang.
@pytest.mark.timeout(900)
def test_dry_run_of_the_retrieval_stages_writes_their_json_and_passes(tmp_path: Path) -> None:
    proc, stages = _dry_run(tmp_path, "--stages", "retrieve,study,tests,corpus")
    assert sorted(stages) == ["corpus", "retrieve", "study", "tests"]
    summary = json.loads(proc.stdout)
    assert summary["ok"] and summary["dry_run"] and summary["goal_images_per_s"] == 8400
    assert list(summary["stages"]) == ["corpus", "tests", "study", "retrieve"]  # the check's order, not the option's
    # Without CUDA every gpu test is collected and skipped, none fails.
    assert stages["tests"]["skipped"] >= 5 and stages["tests"]["failed"] == 0
    # The repeated presentation: 256 records over 64 distinct files, every one embedded.
    retrieve = stages["retrieve"]
    assert retrieve["images"] == 256 and retrieve["distinct_files"] == 64 and retrieve["images_per_s"] > 0
    assert retrieve["bottleneck"].split(" ")[0] in ("decode", "copy", "model")
    assert "profile" in retrieve["config_from"]


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_dry_run_writes_every_stage_and_passes(tmp_path: Path) -> None:
    proc, stages = _dry_run(tmp_path)
    assert sorted(stages) == sorted(STAGES) and len(stages) + 1 <= 8
    assert json.loads(proc.stdout)["ok"]
    decode = stages["decode"]
    assert decode["same_topk"] and decode["replica_decode"]["decoder"] == "cpu"
    assert decode["replica_decode"]["replica_decode_s"] > 0 and decode["producers_decode"]["producer_decode_s"] > 0
    assert [r["stage"] for r in stages["ladder"]["stages"]][:2] == ["baseline", "batched"]


def test_an_unknown_stage_is_one_line(tmp_path: Path) -> None:
    from autotune.errors import ConfigError

    with pytest.raises(ConfigError, match="unknown gpu-check stage\\(s\\) ladders; the stages are corpus"):
        run_gpu_check(tmp_path / "out", dry_run=True, only=("ladders",))
    assert not (tmp_path / "out").exists()


def test_a_stage_cut_off_at_its_budget_is_recorded(tmp_path: Path) -> None:
    # Starting Python alone takes longer than this budget: the stage is killed, its JSON says so.
    record = _run_stage("corpus", tmp_path, tmp_path / "work", True, 0.05, dict(os.environ))
    assert record["ok"] is False and record["timed_out"] is True
    assert json.loads((tmp_path / "corpus.json").read_text())["error"].startswith("stopped at its budget")


def test_bottleneck_names_decode_copy_or_model() -> None:
    def worker(role: str, **seconds: float) -> dict[str, object]:
        return {"role": role, "stats": {"seconds": seconds, "alive_s": 10.0}}

    starved = [worker("consumer", wait_batch=5.0, forward=4.0), worker("producer", decode_resize=9.0)]
    assert bottleneck_breakdown(starved)["bottleneck"].startswith("decode (producers")
    model = [worker("consumer", wait_batch=0.2, forward=8.0, transfer=1.0), worker("producer", wait_slot=6.0)]
    assert bottleneck_breakdown(model)["bottleneck"].startswith("model")
    copy = [worker("consumer", transfer=6.0, forward=3.0, decode=0.5), worker("producer")]
    assert bottleneck_breakdown(copy)["bottleneck"].startswith("copy")
    gpu_decode = [worker("consumer", decode=7.0, forward=2.0), worker("producer", copy_encoded=1.0)]
    figures = bottleneck_breakdown(gpu_decode)
    assert figures["bottleneck"].startswith("decode (replicas")
    assert figures["breakdown_s"]["replica_decode_s"] == 7.0


def test_repeated_source_presents_files_again_under_distinct_ids(small_dataset: Path) -> None:
    base = open_source(small_dataset)
    src = RepeatedSource(base, total=3 * len(base) + 5)
    recs = src.records()
    assert [r.id for r in recs] == list(range(len(recs)))
    assert len({r.locator for r in recs}) == len(recs)
    last = recs[-1]
    assert src.read_bytes(last) == base.read_bytes(base.records()[last.id % len(base)])
    assert src.fingerprint() != RepeatedSource(base, total=len(base)).fingerprint()
