"""Retrieval end to end: index vs full scan, outputs, bad databases, user errors as one line."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from autotune.cli import main
from autotune.data import write_bad_images
from autotune.engine import EngineConfig
from autotune.errors import ConfigError, DataError
from autotune.retrieval import retrieve, write_outputs

QUERY = "a photo of Felis catus"
CFG = EngineConfig(producers=1, cpu_models=1, cpu_threads=1, cpu_batch=8)
FP16_EPS = 2e-3  # unit-norm dot products stored in float16 are exact to about 1e-3


def test_index_topk_equals_full_scan_up_to_fp16_ties(small_dataset: Path, tiny_model: str, tmp_path: Path) -> None:
    scan = retrieve([QUERY], dataset=str(small_dataset), model=tiny_model, config=CFG, rescan=True)
    first = retrieve([QUERY], dataset=str(small_dataset), model=tiny_model, config=CFG, index_dir=tmp_path / "i")
    again = retrieve([QUERY], dataset=str(small_dataset), model=tiny_model, config=CFG, index_dir=tmp_path / "i")
    assert first.mode == "index-new" and again.mode == "index" and again.images == 0
    exact = {h.id: h.score for h in scan.hits[0]}
    kth = scan.hits[0][-1].score
    for h in again.hits[0]:
        # Either the same image as the full scan, or one whose exact score ties the k-th within fp16 precision.
        assert h.id in exact or abs(h.score - kth) <= FP16_EPS
        if h.id in exact:
            assert abs(h.score - exact[h.id]) <= FP16_EPS
    missing = [i for i in exact if i not in {h.id for h in again.hits[0]}]
    assert all(abs(exact[i] - kth) <= FP16_EPS for i in missing)


def test_float32_index_is_exact(small_dataset: Path, tiny_model: str, tmp_path: Path) -> None:
    scan = retrieve([QUERY], dataset=str(small_dataset), model=tiny_model, config=CFG, rescan=True)
    idx = retrieve(
        [QUERY],
        dataset=str(small_dataset),
        model=tiny_model,
        config=CFG,
        index_dir=tmp_path / "i",
        index_dtype="float32",
    )
    assert [h.id for h in idx.hits[0]] == [h.id for h in scan.hits[0]]
    np.testing.assert_allclose([h.score for h in idx.hits[0]], [h.score for h in scan.hits[0]], atol=1e-5)


def test_bad_database_finishes_and_reports_skips(small_dataset: Path, tiny_model: str, tmp_path: Path) -> None:
    folder = tmp_path / "db"
    folder.mkdir()
    for i, src in enumerate(sorted(small_dataset.rglob("*.jpg"))[:10]):
        (folder / f"good{i}.jpg").write_bytes(src.read_bytes())
    expected = write_bad_images(folder)
    res = retrieve([QUERY], dataset=str(folder), model=tiny_model, config=CFG, index_dir=tmp_path / "i")
    files = write_outputs(res, str(folder), tmp_path / "out")
    bad = {k: v for k, v in expected.items() if v != "ok"}
    got = {Path(s["locator"]).name: s["reason"] for s in res.skipped}
    assert got == bad
    assert Path(files["contact_sheet_1"]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(Path(files["skipped"]).read_text().strip().splitlines()) == 1 + len(bad)
    data = json.loads(Path(files["json"]).read_text())
    assert data["queries"][0]["query"] == QUERY and len(data["queries"][0]["hits"]) == 9


def test_user_errors(small_dataset: Path, tiny_model: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="empty query"):
        retrieve(["  "], dataset=str(small_dataset), model=tiny_model)
    with pytest.raises(DataError):
        retrieve([QUERY], dataset=str(tmp_path / "nope"), model=tiny_model)


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["retrieve", ""], "empty query"),
        (["retrieve", QUERY, "--dataset", "/nonexistent/images"], "/nonexistent/images"),
        (["retrieve", QUERY, "--model", "nobody/no-such-model"], "synthetic:"),
    ],
    ids=["empty-query", "missing-dataset", "unknown-model"],
)
def test_cli_errors_are_one_line_exit_2(args: list[str], needle: str, small_dataset: Path, capsys) -> None:
    if "--dataset" not in args:
        args = [*args, "--dataset", str(small_dataset)]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert needle in err and len(err.splitlines()) == 1


def test_unverified_backend_profile_is_refused_until_verified(
    small_dataset: Path, tiny_model: str, tmp_path: Path, capsys, monkeypatch
) -> None:
    """A profile tuned on another model with a non-reference backend must be verified on the model it runs."""
    from autotune.machine import detect_machine
    from autotune.tuner.profile import Profile, save_profile

    monkeypatch.setenv("AUTOTUNE_STUDIES", str(tmp_path / "studies"))
    machine = detect_machine()
    prof = Profile(
        machine_id=machine.machine_id, machine=machine.summary(),
        config=EngineConfig(producers=1, cpu_models=1, cpu_threads=1, cpu_batch=8, cpu_backend="int8"),
        images_per_s=10.0, spread=0.0, study="s", storage="sqlite://", trial=0, scan_size=16,
        model="synthetic:clip-vit-base-patch32", model_arch="", dataset=str(small_dataset),
        dataset_fingerprint="", device="cpu",
    )
    path = save_profile(prof, tmp_path / "studies" / "profiles")
    args = ["retrieve", QUERY, "--dataset", str(small_dataset), "--model", tiny_model, "--profile", str(path),
            "--out", str(tmp_path / "out"), "--index-dir", str(tmp_path / "idx")]
    assert main(args) == 2
    assert "autotune verify" in capsys.readouterr().err
    assert main(["verify", "--profile", str(path), "--model", tiny_model, "--dataset", str(small_dataset),
                 "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["passed"] is True
    assert main([*args, "--json"]) == 0
    assert len(json.loads(capsys.readouterr().out)["queries"][0]["hits"]) == 9


def test_static_int8_index_keeps_its_calibration_set_across_updates(
    small_dataset: Path, tiny_model: str, tmp_path: Path
) -> None:
    """The index key names the calibration set; an added image is an update with the same set, not a rebuild;
    --rebuild-index draws the set again (here the same database: the same digest)."""
    from autotune.data import open_source
    from autotune.models.backends import backend_unavailable
    from autotune.models.calibration import calibration_set

    if backend_unavailable("onnx-int8s"):
        pytest.skip("onnxruntime missing")
    import shutil

    data = tmp_path / "db"
    shutil.copytree(small_dataset, data)
    cfg = EngineConfig(producers=1, cpu_models=1, cpu_threads=1, cpu_batch=8, cpu_backend="onnx-int8s")
    first = retrieve([QUERY], dataset=str(data), model=tiny_model, config=cfg, index_dir=tmp_path / "i")
    meta = json.loads((tmp_path / "i" / "meta.json").read_text())
    digest = calibration_set(open_source(data), tiny_model).digest
    assert first.mode == "index-new" and meta["key"]["recipe"] == f"cpu:onnx-int8s@cal:{digest}"
    images = sorted(p for p in data.rglob("*.jpg"))
    for n, src in enumerate(images[:9]):  # nine new files: the set a new draw would pick changes
        shutil.copy(src, src.with_name(f"added-{n}.jpg"))
    second = retrieve([QUERY], dataset=str(data), model=tiny_model, config=cfg, index_dir=tmp_path / "i")
    assert second.mode == "index-updated" and second.images == 9
    assert json.loads((tmp_path / "i" / "meta.json").read_text())["key"]["recipe"] == meta["key"]["recipe"]


def test_a_revised_backend_changes_the_index_recipe(monkeypatch: pytest.MonkeyPatch) -> None:
    """Embeddings of a backend whose numerics were revised do not share an index with the earlier recipe's."""
    import dataclasses

    from autotune.models import backends
    from autotune.retrieval import embedding_recipe

    cfg = EngineConfig(cpu_backend="onnx-int8")
    assert embedding_recipe(cfg) == "cpu:onnx-int8" and embedding_recipe(EngineConfig()) == "cpu:eager"
    entry = backends.CPU_BACKEND_TABLE["onnx-int8"]
    monkeypatch.setitem(backends.CPU_BACKEND_TABLE, "onnx-int8", dataclasses.replace(entry, revision=3))
    assert embedding_recipe(cfg) == "cpu:onnx-int8.r3"
