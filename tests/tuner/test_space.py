"""Search spaces: the built-in files, machine-shaped bounds, constraints, and one-line errors for bad files."""

from __future__ import annotations

import textwrap
from importlib import resources
from pathlib import Path

import optuna
import pytest

from autotune.engine.config import safe_default_for
from autotune.errors import ConfigError
from autotune.tuner.space import DEVICES, builtin_space_path, layouts_for, load_space, parse_layout

SMALL_CPU = {"cores": 2, "logical_cores": 2, "physical_cores": 2, "memory_gb": 24.0, "gpus": 0, "gpu_memory_gb": 0.0}
BIG_GPU = {"cores": 16, "logical_cores": 16, "physical_cores": 8, "memory_gb": 128.0, "gpus": 1, "gpu_memory_gb": 80.0}


def test_builtin_spaces_ship_as_package_data() -> None:
    names = {p.name for p in resources.files("autotune.search_spaces").iterdir()}
    assert {"cpu.yaml", "gpu.yaml", "cpu+gpu.yaml"} <= names
    for dev in DEVICES:
        path = builtin_space_path(dev)
        assert path.is_file() and path.name == f"{dev}.yaml"
        assert load_space(path, machine_facts=BIG_GPU).device == dev


def test_cpu_space_on_a_small_machine() -> None:
    space = load_space("cpu", machine_facts=SMALL_CPU, device="cpu")
    assert space.device == "cpu"
    bounds = {p.name: p for p in space.params}
    assert bounds["cpu_layout"].choices == ("1x1", "1x2", "2x1")  # every layout fits the 2 cores
    assert bounds["producers"].high == 1  # max(1, cores // 2)
    defaults = space.default_params()
    assert not space.violations(defaults)
    assert defaults["cpu_layout"] == "1x2"
    cfg = space.to_config(defaults).validate(cores=2, gpus=0)
    assert cfg.gpu_models == 0 and (cfg.cpu_models, cfg.cpu_threads) == (1, 2)


# Explicit ids: a bare "gpu" id would read as the `gpu` marker keyword and skip these CPU-only checks.
@pytest.mark.parametrize("device", ["gpu", "cpu+gpu", "cpu"], ids=["space-gpu", "space-cpu+gpu", "space-cpu"])
def test_builtin_spaces_on_a_gpu_machine(device: str) -> None:
    space = load_space(device, machine_facts=BIG_GPU, device=device)
    assert space.device == device
    defaults = space.default_params()
    assert not space.violations(defaults)
    space.to_config(defaults).validate(cores=16, gpus=1)
    bounds = {p.name: p for p in space.params}
    if "cpu_threads" in bounds:
        assert bounds["cpu_threads"].high == (16 if device == "cpu" else 8)
    if "producers" in bounds:
        assert bounds["producers"].high == (8 if device == "cpu" else 15)


@pytest.mark.parametrize("device", ["gpu", "cpu+gpu"], ids=["space-gpu", "space-cpu+gpu"])
def test_gpu_device_without_gpu_is_refused(device: str) -> None:
    with pytest.raises(ConfigError, match="GPU") as info:
        load_space(device, machine_facts=SMALL_CPU, device=device)
    assert "\n" not in str(info.value)


def test_unknown_builtin_name() -> None:
    with pytest.raises(ConfigError, match="unknown search space"):
        load_space("tpu", machine_facts=SMALL_CPU)


def test_bounds_follow_the_machine() -> None:
    for cores in (1, 2, 4, 32):
        facts = {**SMALL_CPU, "cores": cores, "logical_cores": cores}
        space = load_space("cpu", machine_facts=facts)
        bounds = {p.name: p for p in space.params}
        assert space.largest("cpu_threads", 1) == cores and space.largest("cpu_models", 1) == cores
        assert all(m * t <= cores for m, t in map(parse_layout, bounds["cpu_layout"].choices))
        assert bounds["producers"].high == max(1, cores // 2)
        assert not space.violations(space.default_params())


def test_constraints_filter_proposals(tmp_path: Path) -> None:
    """A constraint may name the engine settings a replica layout stands for."""
    path = tmp_path / "space.yaml"
    path.write_text(
        "params:\n  cpu_layout: {type: layout, high: cores}\n  cpu_batch: {type: int, low: 8, high: 64}\n"
        "constraints: ['cpu_models * cpu_threads * cpu_batch <= 64']\ndefaults: {cpu_layout: [1, 1], cpu_batch: 8}\n"
    )
    space = load_space(path, machine_facts=SMALL_CPU)
    ok = {"cpu_layout": "2x1", "cpu_batch": 32}
    assert space.violations(ok) == []
    assert space.violations({**ok, "cpu_batch": 64}) == ["cpu_models * cpu_threads * cpu_batch <= 64"]
    assert space.to_config(ok).cpu_models == 2 and space.default_params() == {"cpu_layout": "1x1", "cpu_batch": 8}


def test_grid_is_all_feasible() -> None:
    facts = {**SMALL_CPU}
    space = load_space("cpu", machine_facts=facts)
    grid = space.grid()
    assert grid
    assert all(not space.violations(p) for p in grid)
    # Layouts 1x1, 1x2, 2x1; batch 8,16,32,64; 2 schedulings; pinning asked only for 1x1 (two choices there);
    # times the inference backends usable here, and for openvino-int8 on 1x2 (even threads) two stream counts.
    choices = next(p for p in space.params if p.name == "cpu_backend").choices
    per_backend = 3 * 4 * 2 + 1 * 4 * 2
    streams = 1 * 4 * 2 if "openvino-int8" in choices else 0  # the 1x2 points again, with 2 streams
    assert len(grid) == per_backend * len(choices) + streams
    for p in grid:
        space.to_config(p).validate(cores=2, gpus=0)


def test_defaults_feasible_for_every_builtin() -> None:
    for dev in DEVICES:
        space = load_space(dev, machine_facts=BIG_GPU)
        assert not space.violations(space.default_params())


# --------------------------------------------------------------------------------------- malformed files

GOOD_PARAMS = """\
params:
  producers: {type: int, low: 1, high: 2}
"""


def _write(tmp_path: Path, text: str, name: str = "space.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("params: {producers: {type: int, low: 1, high: 2}\n", "not valid YAML"),
        (GOOD_PARAMS + "colour: blue\n", "colour"),
        ("params:\n  warp_drive: {type: int, low: 1, high: 2}\n", "params.warp_drive"),
        ("params:\n  producers: {type: integer, low: 1, high: 2}\n", "params.producers.type"),
        ("params:\n  producers: {type: int, high: 2}\n", "params.producers.low"),
        ("params:\n  producers: {type: int, low: 1}\n", "params.producers.high"),
        ("params:\n  producers: {type: int, low: 4, high: 2}\n", "params.producers"),
        ("params:\n  cpu_batch: {type: int, low: 0, high: 64, log: true}\n", "params.cpu_batch.log"),
        ('params:\n  producers: {type: int, low: 1, high: "cores +"}\n', "params.producers.high"),
        ('params:\n  producers: {type: int, low: 1, high: "nonsense_fact"}\n', "nonsense_fact"),
        ("params:\n  scheduling: {type: categorical, choices: []}\n", "params.scheduling.choices"),
        (GOOD_PARAMS + 'constraints:\n  - "producers <="\n', "constraints[0]"),
        (GOOD_PARAMS + 'constraints:\n  - "producers <= widgets"\n', "widgets"),
        (GOOD_PARAMS + "constraints:\n  - \"__import__('os').system('true')\"\n", "not allowed"),
        (GOOD_PARAMS + 'constraints:\n  - "producers.real <= 2"\n', "Attribute"),
        (GOOD_PARAMS + 'constraints:\n  - "[producers][0] <= 2"\n', "not allowed"),
        (GOOD_PARAMS + 'constraints:\n  - "producers > 5"\n', "defaults break constraint"),
        (GOOD_PARAMS + 'constraints:\n  - "producers > 5"\n', "constraints[0]"),
        ("params:\n  scheduling: {type: categorical, choices: [{a: 1}]}\n", "params.scheduling.choices"),
        (
            "params:\n  scheduling: {type: categorical, choices: [dynamic]}\ndefaults:\n  scheduling: fifo\n",
            "defaults.scheduling",
        ),
        ("params:\n  producers: {type: int, low: 1, high: 2, step: .inf}\n", "params.producers.step"),
        ("params:\n  producers: {type: int, low: 1, high: 2}\ndefaults:\n  producers: [1]\n", "defaults.producers"),
        (GOOD_PARAMS + "fixed:\n  turbo: 1\n", "fixed.turbo"),
        (GOOD_PARAMS + "defaults:\n  cpu_batch: 8\n", "defaults.cpu_batch"),
        (GOOD_PARAMS + "device: tpu\n", "device"),
        ("- just\n- a list\n", "expected a mapping"),
        ("name: empty\n", "params"),
    ],
)
def test_malformed_space_is_one_line(tmp_path: Path, text: str, needle: str) -> None:
    path = _write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_space(path, machine_facts=SMALL_CPU)
    msg = str(info.value)
    assert "\n" not in msg
    assert needle in msg
    assert "space.yaml" in msg


def test_forbidden_expression_never_runs(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    path = _write(tmp_path, GOOD_PARAMS + f"constraints:\n  - \"__import__('pathlib').Path('{marker}').touch()\"\n")
    with pytest.raises(ConfigError):
        load_space(path, machine_facts=SMALL_CPU)
    assert not marker.exists()


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_space(tmp_path / "nope.yaml", machine_facts=SMALL_CPU)


def test_custom_space_with_expressions(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        """\
        name: custom
        device: cpu
        params:
          producers:   {type: int, low: 1, high: "max(1, cores - 1)"}
          cpu_threads: {type: int, low: 1, high: "min(4, cores)"}
          cpu_batch:   {type: categorical, choices: [8, 32]}
        fixed:
          cpu_models: 1
        constraints:
          - "producers + cpu_models * cpu_threads <= cores + 1"
        defaults:
          cpu_threads: 1
        """,
    )
    space = load_space(path, machine_facts=SMALL_CPU)
    assert space.name == "custom"
    assert {p.name: p.high for p in space.params if p.type == "int"} == {"producers": 1, "cpu_threads": 2}
    assert space.default_params() == {"producers": 1, "cpu_threads": 1, "cpu_batch": 8}
    grid = space.grid()
    assert len(grid) == 4
    assert space.to_config(grid[0]).cpu_models == 1


def test_layouts_fit_the_cores_and_stay_few_on_big_machines() -> None:
    """Every split of each power of two and of the core count: all fit, and 56 cores give 29, not 230."""
    assert layouts_for(2) == ("1x1", "1x2", "2x1")
    big = layouts_for(56)
    assert len(big) == 29 and "7x8" in big and "1x56" in big and "3x1" not in big
    assert all(m * t <= 56 for m, t in map(parse_layout, big))
    with pytest.raises(ConfigError, match="not a layout"):
        parse_layout("2 by 1")


@pytest.mark.parametrize("cores", [1, 2, 4, 16, 56])
def test_trial_0_is_the_safe_default(cores: int) -> None:
    """The built-in CPU spaces start from the configuration `retrieve` runs without a profile."""
    facts = {**SMALL_CPU, "cores": cores, "logical_cores": cores}
    for name in ("cpu", "cpu-quick"):
        space = load_space(builtin_space_path(name), machine_facts=facts)
        assert space.to_config(space.default_params()) == safe_default_for(cores)


def test_every_proposal_of_the_cpu_space_is_feasible() -> None:
    """No constraint to break: the layout fits the cores, and pinning is only asked for where it can be placed."""
    for cores in (2, 4):
        facts = {**SMALL_CPU, "cores": cores, "logical_cores": cores}
        space = load_space("cpu", machine_facts=facts)
        assert space.constraints == ()
        study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=cores))
        for _ in range(60):
            trial = study.ask()
            params = space.suggest(trial)
            config, bad = space.checked_config(params, cores, 0)
            assert config is not None and not bad, (params, bad)
            cfg = space.to_config(params)
            placeable = cfg.producers + cfg.cpu_models * cfg.cpu_threads <= cores
            assert ("pin_cores" in params) == placeable
            study.tell(trial, 1.0)


def test_a_conditional_parameter_names_only_known_settings(tmp_path: Path) -> None:
    path = tmp_path / "space.yaml"
    path.write_text(
        "params:\n  producers: {type: int, low: 1, high: 2}\n"
        "  pin_cores: {type: categorical, choices: [false, true], when: 'producers < speed'}\n"
    )
    with pytest.raises(ConfigError, match="when: unknown name") as info:
        load_space(path, machine_facts=SMALL_CPU)
    assert "\n" not in str(info.value)
