"""Where work runs, checked without CUDA: decode placement, replicas on every GPU, the host stager, the split."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from autotune.data import open_source, write_bad_images
from autotune.engine import EngineConfig, embed_queries, run_scan
from autotune.engine.scheduler import static_weights, weighted_order
from autotune.engine.workers import replicas_for
from autotune.errors import ConfigError
from autotune.machine import GpuInfo, MachineInfo
from autotune.models.backends._torch import HostStager
from autotune.tuner.space import load_space

FAKE = "fake:32"
QUERIES = ["a photo of Felis catus", "a photo of Coffea arabica"]
SPACES = Path(__file__).resolve().parents[2] / "search_spaces"
H200X8 = {"cores": 128, "logical_cores": 128, "physical_cores": 64, "memory_gb": 2000.0, "gpus": 8,
          "gpu_memory_gb": 140.4}  # fmt: skip


def test_replica_decode_gives_the_producers_results_and_their_skip_reasons(
    small_dataset: Path, tmp_path: Path
) -> None:
    folder = tmp_path / "mixed"
    folder.mkdir()
    for i, src in enumerate(sorted(small_dataset.rglob("*.jpg"))[:12]):
        (folder / f"good{i:02d}.jpg").write_bytes(src.read_bytes())
    expected = write_bad_images(folder)
    source = open_source(folder)
    q = embed_queries(FAKE, QUERIES)
    on_producers = run_scan(source, FAKE, EngineConfig(producers=2, cpu_batch=4), queries=q)
    # decode: gpu on a CPU replica runs the same code path (JPEGs shipped encoded, decoded in batches by the
    # replica) with the CPU decoder: the results must be the producers' exactly.
    in_replica = run_scan(source, FAKE, EngineConfig(producers=2, cpu_batch=4, decode="gpu"), queries=q)
    assert in_replica.topk_ids.tolist() == on_producers.topk_ids.tolist()
    np.testing.assert_allclose(in_replica.topk_scores, on_producers.topk_scores, atol=1e-6)
    assert in_replica.skipped == on_producers.skipped
    bad = {name: why for name, why in expected.items() if why != "ok"}
    assert {Path(s["locator"]).name: s["reason"] for s in in_replica.skipped} == bad
    consumer = next(w for w in in_replica.workers if w["role"] == "consumer")
    producers = [w for w in in_replica.workers if w["role"] == "producer"]
    assert consumer["stats"]["seconds"].get("decode", 0) > 0
    assert sum(p["stats"]["seconds"].get("copy_encoded", 0) > 0 for p in producers) >= 1
    # The truncated/corrupt JPEGs pass the producers' header check: the replica found them bad.
    assert consumer["stats"]["counts"].get("skipped", 0) >= 1


def test_gpu_replicas_go_on_every_visible_gpu() -> None:
    cfg = EngineConfig(producers=8, cpu_models=1, cpu_threads=4, gpu_models=2, gpu_batch=256)
    reps = replicas_for(cfg, gpus=8)
    assert [r.device for r in reps] == ["cpu"] + [f"cuda:{g}" for g in range(8) for _ in range(2)]
    assert {(r.batch, r.precision) for r in reps[1:]} == {(256, "fp16")}
    assert replicas_for(EngineConfig(gpu_models=0), gpus=8) == replicas_for(EngineConfig(gpu_models=0), gpus=0)


@pytest.mark.parametrize("name", ["gpu", "cpu+gpu"], ids=["space-gpu", "space-cpu+gpu"])
def test_gpu_spaces_are_shaped_by_gpu_count_and_memory(name: str) -> None:
    big = load_space(SPACES / f"{name}.yaml", machine_facts=H200X8)
    small = load_space(SPACES / f"{name}.yaml", machine_facts={**H200X8, "gpus": 1, "gpu_memory_gb": 16.0})
    hi = {p.name: p.high for p in big.params if p.type == "int"}
    lo = {p.name: p.high for p in small.params if p.type == "int"}
    assert hi["gpu_models"] == 4 and lo["gpu_models"] == 1
    assert hi["gpu_batch"] == 1024 and lo["gpu_batch"] == 128
    backends = next(p.choices for p in big.params if p.name == "gpu_backend")
    assert set(backends) == {"eager", "compile", "channels-last", "cuda-graphs"}
    cfg = big.to_config(big.default_params()).validate(cores=128, gpus=8)
    assert len([r for r in replicas_for(cfg, gpus=8) if r.device != "cpu"]) == 8 * cfg.gpu_models
    # Without torchvision the GPU decode choice is dropped, never offered to fail in a trial.
    decode = next(p.choices for p in big.params if p.name == "decode")
    from autotune.preprocess.decoders import gpu_decoder_unavailable

    assert ("gpu" in decode) == (gpu_decoder_unavailable() is None)


def test_engine_refuses_unknown_gpu_backend_and_decode() -> None:
    with pytest.raises(ConfigError, match="gpu_backend must be one of"):
        EngineConfig(gpu_backend="tensorrt").validate(cores=2, gpus=0)
    with pytest.raises(ConfigError, match="decode must be one of"):
        EngineConfig(decode="fpga").validate(cores=2, gpus=0)  # type: ignore[arg-type]
    cfg = EngineConfig(cpu_models=0, gpu_models=1, gpu_backend="cuda-graphs", decode="gpu")
    assert cfg.validate(cores=16, gpus=1) is cfg
    assert "cuda-graphs" in cfg.describe() and "gpu decode" in cfg.describe()
    assert EngineConfig.from_dict(cfg.to_dict()) == cfg


def test_host_stager_reuses_one_buffer_and_grows_it_only_when_needed() -> None:
    # "meta" stands in for a CUDA device: the copy goes through the same buffer logic, no memory is moved.
    stager = HostStager("meta", pin=False)
    assert stager.to_device(np.zeros((8, 4, 4, 3), np.uint8)).shape == (8, 4, 4, 3)
    out = stager.to_device(np.ones((3, 4, 4, 3), np.uint8))
    assert out.device.type == "meta" and tuple(out.shape) == (3, 4, 4, 3) and stager.allocations == 1
    assert stager.buffer is not None and int(stager.buffer[:3].sum()) == 3 * 4 * 4 * 3
    stager.to_device(np.zeros((16, 4, 4, 3), np.uint8))
    stager.to_device(np.zeros((2, 5, 5, 3), np.uint8))
    assert stager.allocations == 3
    assert HostStager("cuda:3").pin and not HostStager("cpu").pin
    host = np.zeros((2, 4, 4, 3), np.uint8)
    assert HostStager("cpu").to_device(host).data_ptr() == host.ctypes.data  # the CPU uses the batch in place


def test_static_split_gives_gpus_their_share_by_probed_speed() -> None:
    # One CPU replica at 0.1 s an image, eight GPU replicas at 1 ms: the CPU gets about 1 batch in 800.
    weights = static_weights([0.1] + [0.001] * 8)
    order = weighted_order(weights, 8010)
    counts = np.bincount(order, minlength=9)
    assert counts[0] == 10 and set(counts[1:]) == {1000}


def test_one_profile_per_machine_gpus_included() -> None:
    base = dict(cpu_model="Intel Xeon", physical_cores=64, logical_cores=128, memory_gb=2000.0)
    eight = MachineInfo(**base, gpus=tuple(GpuInfo("NVIDIA H200", 140.4) for _ in range(8)))  # type: ignore[arg-type]
    one = MachineInfo(**base, gpus=(GpuInfo("NVIDIA H200", 140.4),))  # type: ignore[arg-type]
    none = MachineInfo(**base)  # type: ignore[arg-type]
    assert "-8xnvidiah200-" in eight.machine_id and "-1xnvidiah200-" in one.machine_id
    assert len({eight.machine_id, one.machine_id, none.machine_id}) == 3
    assert eight.facts()["gpus"] == 8 and eight.facts()["gpu_memory_gb"] == 140.4


def test_normalisation_runs_on_the_batchs_device_in_the_replicas_precision() -> None:
    import torch

    from autotune.preprocess import PreprocessSpec, normalize

    # "meta" stands in for the GPU: the constants follow the batch, nothing comes back to the host.
    out = normalize(torch.zeros((2, 224, 224, 3), dtype=torch.uint8, device="meta"), PreprocessSpec(),
                    dtype=torch.float16)  # fmt: skip
    assert out.device.type == "meta" and out.dtype == torch.float16 and tuple(out.shape) == (2, 3, 224, 224)


def test_the_ladder_gets_gpu_stages_only_with_gpus() -> None:
    from autotune.bench.ladder_stages import gpu_stage_configs

    assert gpu_stage_configs(2, 0, 32) == []
    stages = {name: cfg for name, cfg, _what in gpu_stage_configs(16, 8, 32)}
    assert list(stages) == ["gpu replicas", "gpu decode", "cpu+gpu static"]
    for cfg in stages.values():
        cfg.validate(cores=16, gpus=8)
    assert stages["gpu decode"].decode == "gpu" and stages["gpu replicas"].decode == "cpu"
    assert stages["cpu+gpu static"].scheduling == "static" and stages["cpu+gpu static"].cpu_models == 1
