"""Search-space expressions: hostile input is a quick one-line ConfigError naming the file and the key."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from autotune.errors import ConfigError
from autotune.tuner import expressions
from autotune.tuner.space import load_space

FACTS = {"cores": 2, "logical_cores": 2, "physical_cores": 2, "memory_gb": 24.0, "gpus": 0, "gpu_memory_gb": 0.0}
WHERE = "my-space.yaml: params.producers.high"

# Each ran unbounded (CPU or memory) or escaped as a Python traceback before the language was bounded.
HOSTILE = [
    "9**9**9",
    "'x' * 10**10",
    "1 << 10**10",
    "cores in cores",
    "cores & 1",
    "cores / 0",
    "int('abc')",
]
# Further ways to leave the bounded numbers: overflow, non-finite or complex results, odd syntax.
MORE_HOSTILE = [
    "2 ** 64",
    "10 ** 18 * 10",
    "2.0 ** 64 * 2.0 ** 64",
    "1e400",
    "1 / 1e-300",
    "(-8) ** 0.5",
    "0 ** -1",
    "cores % 0",
    "cores // (gpus * 1)",
    "~cores",
    "cores @ cores",
    "cores is cores",
    "min(cores)",
    "int(cores, 2)",
    "max(x=1)",
    "-" * 100 + "1",
    "1 + " * 200 + "1",
    "cores if gpus else 1",
    "[cores][0]",
]


def _one_line_naming(exc: ConfigError, *needles: str) -> str:
    """The error's message, checked to be one line mentioning every needle."""
    msg = str(exc)
    assert "\n" not in msg
    for needle in needles:
        assert needle in msg, (needle, msg)
    return msg


def _evaluate(expr: str) -> Any:
    """Parse and evaluate ``expr`` over the small machine's facts, as space.py does for a bound."""
    return expressions.evaluate(expressions.parse(expr, WHERE), FACTS, WHERE)


def _space_file(tmp_path: Path, doc: dict[str, Any]) -> Path:
    """A space file written with yaml.safe_dump, so any expression text survives quoting."""
    path = tmp_path / "hostile-space.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def _load_error(path: Path, *needles: str) -> str:
    """Load ``path``, expecting a one-line ConfigError that names the file and every needle."""
    with pytest.raises(ConfigError) as info:
        load_space(path, machine_facts=FACTS)
    return _one_line_naming(info.value, str(path), *needles)


def _categorical_space(tmp_path: Path, name: str, choices: list[Any], default: Any) -> Path:
    """A space with one categorical parameter and its default."""
    return _space_file(
        tmp_path, {"params": {name: {"type": "categorical", "choices": choices}}, "defaults": {name: default}}
    )


def _bound_space(tmp_path: Path, expr: str) -> Path:
    """A space whose producers.high is ``expr``."""
    return _space_file(tmp_path, {"params": {"producers": {"type": "int", "low": 1, "high": expr}}})


def _constraint_space(tmp_path: Path, expr: str) -> Path:
    """A valid space with ``expr`` as its only constraint."""
    return _space_file(tmp_path, {"params": {"producers": {"type": "int", "low": 1, "high": 2}}, "constraints": [expr]})


@pytest.mark.timeout(5)
@pytest.mark.parametrize("expr", HOSTILE + MORE_HOSTILE)
def test_hostile_expression_api(expr: str) -> None:
    with pytest.raises(ConfigError) as info:
        _evaluate(expr)
    _one_line_naming(info.value, "my-space.yaml", "params.producers.high")


@pytest.mark.timeout(5)
@pytest.mark.parametrize("expr", HOSTILE)
def test_hostile_bound_in_a_space_file(tmp_path: Path, expr: str) -> None:
    _load_error(_bound_space(tmp_path, expr), "params.producers.high")


@pytest.mark.timeout(5)
@pytest.mark.parametrize("expr", HOSTILE)
def test_hostile_constraint_in_a_space_file(tmp_path: Path, expr: str) -> None:
    _load_error(_constraint_space(tmp_path, expr), "constraints[0]")


@pytest.mark.parametrize(
    ("expr", "needle"),
    [
        ("1 << 2", "'<<'"),
        ("cores in cores", "'in'"),
        ("cores & 1", "'&'"),
        ("'x' * 2", "string"),
        ("9**9**9", "exponent"),
        ("cores / 0", "division by zero"),
        ("2 ** 64", "out of range"),
        ("1e400", "finite"),
        ("(-8) ** 0.5", "no real value"),
        ("min(cores)", "at least 2"),
    ],
)
def test_messages_say_what_is_wrong(expr: str, needle: str) -> None:
    with pytest.raises(ConfigError) as info:
        _evaluate(expr)
    _one_line_naming(info.value, needle)


@pytest.mark.parametrize(
    ("expr", "value"),
    [
        ("max(1, cores // 2)", 1),
        ("min(2, cores) * 4 - 1", 7),
        ("cores ** 3", 8),
        ("2 ** -1", 0.5),
        ("int(memory_gb / 5)", 4),
        ("abs(-cores)", 2),
        ("10 ** 18", 10**18),
        ("-(10 ** 18)", -(10**18)),
        ("1 < cores <= 2", True),
        ("not gpus", True),
        ("true and cores", 2),
        # Short-circuit as in Python: the division is never reached when there is no GPU.
        ("gpus == 0 or memory_gb / gpus > 8", True),
        ("gpus > 0 and memory_gb / gpus > 8", False),
    ],
)
def test_ordinary_expressions_still_work(expr: str, value: Any) -> None:
    assert _evaluate(expr) == value


def test_names_must_be_numbers() -> None:
    where = "space.yaml: constraints[0]"
    tree = expressions.parse("scheduling == 1", where)
    with pytest.raises(ConfigError) as info:
        expressions.evaluate(tree, {"scheduling": "dynamic"}, where)
    _one_line_naming(info.value, where, "'scheduling'", "not a number")


def test_unbounded_fact_is_refused() -> None:
    with pytest.raises(ConfigError) as info:
        expressions.evaluate(expressions.parse("cores", WHERE), {"cores": 10**30}, WHERE)
    _one_line_naming(info.value, WHERE, "out of range")


def test_division_by_zero_in_a_proposal_names_the_constraint(tmp_path: Path) -> None:
    path = _space_file(
        tmp_path,
        {
            "params": {"producers": {"type": "int", "low": 1, "high": 2}},
            "constraints": ["producers == 1 or cores / (producers - 2) < 4"],
        },
    )
    space = load_space(path, machine_facts=FACTS)
    with pytest.raises(ConfigError) as info:
        space.violations({"producers": 2})
    _one_line_naming(info.value, str(path), "constraints[0]", "division by zero")


@pytest.mark.parametrize("bound", ["1e400", 1e400, True, [1]])
def test_non_finite_or_non_number_bounds(tmp_path: Path, bound: Any) -> None:
    _load_error(_bound_space(tmp_path, bound), "params.producers.high")


# ------------------------------------------------------------------------------------------- categorical defaults


def test_categorical_default_outside_the_choices(tmp_path: Path) -> None:
    path = _categorical_space(tmp_path, "scheduling", ["dynamic", "static"], "round-robin")
    _load_error(path, "defaults.scheduling", "'round-robin'", "dynamic, static")


def test_categorical_default_dropped_on_this_machine(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from autotune.models import backends

    def only_eager(name: str, device: str = "cpu") -> str | None:
        """This test's machine: every backend but eager lacks its package."""
        return None if name == "eager" else f"backend {name!r} needs a package that is not installed"

    monkeypatch.setattr(backends, "backend_unavailable", only_eager)
    path = _categorical_space(tmp_path, "cpu_backend", ["eager", "onnx-int8"], "onnx-int8")
    _load_error(path, "defaults.cpu_backend", "not usable on this machine", "not installed")


def test_categorical_default_among_the_choices_loads(tmp_path: Path) -> None:
    path = _categorical_space(tmp_path, "cpu_batch", [16, 32, 64], 32)
    assert load_space(path, machine_facts=FACTS).default_params() == {"cpu_batch": 32}


# ---------------------------------------------------------------------------------------------------- the CLI


@pytest.mark.timeout(60)
def test_cli_study_with_a_hostile_space_is_one_error_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import optuna

    from autotune.cli import main
    from autotune.tuner import search as search_mod

    started: list[str] = []

    def no_work(*args: Any, **kwargs: Any) -> Any:
        """Stand-in for creating a study or measuring a trial: neither may happen before the space loads."""
        started.append("work")
        raise AssertionError("a study or trial started before the space was checked")

    monkeypatch.setattr(optuna, "create_study", no_work)
    monkeypatch.setattr(search_mod, "measure", no_work)  # trials are measured by the study's search loop
    monkeypatch.setenv("AUTOTUNE_STUDIES", str(tmp_path / "studies"))
    path = _bound_space(tmp_path, "9**9**9")
    assert main(["study", "--space", str(path), "--trials", "1"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert err.startswith("error: ")
    assert str(path) in err and "params.producers.high" in err
    assert started == []
