"""Reading a search-space file: parameter kinds, machine-shaped bounds, conditions, defaults, one-line errors."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

import autotune.tuner.expressions as expressions
from autotune.engine.config import CPU_BACKENDS, DECODE_PLACEMENTS, EngineConfig
from autotune.errors import ConfigError
from autotune.models import backends
from autotune.models.backends import GPU_BACKENDS

DEVICES = ("cpu", "gpu", "cpu+gpu")
_PARAM_KEYS = {"type", "low", "high", "step", "log", "choices", "when"}
# The replica layout: one categorical parameter of "MxT" labels (M replicas of T threads each) standing for the
# engine's two settings cpu_models and cpu_threads, so that every layout proposed fits the machine's cores.
LAYOUT = "cpu_layout"
LAYOUT_FIELDS = ("cpu_models", "cpu_threads")
_TOP_KEYS = {"name", "description", "device", "params", "fixed", "constraints", "defaults"}
FIELDS = {f.name: f for f in dataclasses.fields(EngineConfig)}


@dataclass(frozen=True)
class Param:
    """One tunable engine setting: int/float range (optionally log or stepped) or categorical choices."""

    name: str
    type: str
    low: Any = None
    high: Any = None
    step: Any = None
    log: bool = False
    choices: tuple[Any, ...] = ()
    # Asked only where this holds: conditions over machine facts and earlier parameters, each an expression or a
    # {parameter: [values]} mapping (expressions are numbers only: a backend is named by the mapping form).
    when: tuple[Any, ...] | None = None

    def distribution(self) -> Any:
        """The Optuna distribution for this parameter (bounds already resolved)."""
        from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

        if self.type in ("categorical", "layout"):
            return CategoricalDistribution(list(self.choices))
        if self.type == "int":
            return IntDistribution(int(self.low), int(self.high), log=self.log, step=int(self.step or 1))
        return FloatDistribution(float(self.low), float(self.high), log=self.log, step=self.step)

    def values(self) -> list[Any]:
        """Every value (for exhaustive grids): choices, or the integer range (log spaces use powers of 2)."""
        if self.type in ("categorical", "layout"):
            return list(self.choices)
        if self.type != "int":
            raise ConfigError(f"parameter {self.name}: a float range has no finite grid")
        if self.log:
            vals, v = [], int(self.low)
            while v <= int(self.high):
                vals.append(v)
                v *= 2
            return vals
        return list(range(int(self.low), int(self.high) + 1, int(self.step or 1)))


def layout_label(models: int, threads: int) -> str:
    """The label of a replica layout: ``2x1`` is two replicas of one thread each."""
    return f"{models}x{threads}"


def parse_layout(label: Any) -> tuple[int, int]:
    """(replicas, threads) of a layout label such as ``2x1``; anything else is one ConfigError line."""
    parts = str(label).split("x")
    if len(parts) != 2 or not all(p.isdigit() for p in parts):
        raise ConfigError(f"{LAYOUT}: {label!r} is not a layout like 2x1 (replicas x threads each)")
    return int(parts[0]), int(parts[1])


def layouts_for(cores: int, min_models: int = 1) -> tuple[str, ...]:
    """Replica layouts up to ``cores`` model threads in all: every split of each power of two and of ``cores``.

    On 2 cores: ``1x1``, ``1x2``, ``2x1``. Powers of two and the core count keep a 56-core machine at 29
    layouts instead of every product up to 56 (230).
    """
    totals = {cores} | {1 << k for k in range(cores.bit_length()) if 1 << k <= cores}
    out = [
        layout_label(m, total // m)
        for total in sorted(totals)
        for m in range(max(min_models, 1), total + 1)
        if total % m == 0
    ]
    return tuple(sorted(out, key=parse_layout))


def builtin_space_path(name: str) -> Path:
    """Path of a space shipped with the package (``cpu``, ``gpu``, ``cpu+gpu``).

    In a source checkout the repository's ``search_spaces/`` beside the package wins: a checkout run through
    ``PYTHONPATH`` (the GPU check on a machine where nothing is installed, a worktree beside an editable
    install of another one) then reads its own spaces.
    """
    checkout = Path(__file__).resolve().parents[2] / "search_spaces" / f"{name}.yaml"
    if checkout.is_file():
        return checkout
    ref = resources.files("autotune.search_spaces").joinpath(f"{name}.yaml")
    return Path(str(ref))


def _resolve(value: Any, facts: Mapping[str, Any], where: str) -> Any:
    """A bound written as a number or as an expression over machine facts."""
    if isinstance(value, str):
        return expressions.evaluate(expressions.parse(value, where), facts, where)
    return value


def _resolve_number(value: Any, facts: Mapping[str, Any], where: str) -> int | float:
    """Like :func:`_resolve`, for a setting that must come out a finite number (not a bool, list or inf)."""
    value = _resolve(value, facts, where)
    if isinstance(value, bool):
        raise ConfigError(f"{where}: must be a number or an expression, got {value!r}")
    return expressions.check_number(value, "the value", where)


def space_path(space: str | Path) -> Path:
    """The file a space names: a built-in name's installed YAML, or the path itself (which must exist)."""
    path = Path(space)
    if not path.suffix and not path.exists():
        if str(space) not in DEVICES:
            raise ConfigError(f"unknown search space {space!r}: use one of {', '.join(DEVICES)} or a YAML file")
        path = builtin_space_path(str(space))
    if not path.is_file():
        raise ConfigError(f"search space file not found: {path}")
    return path


def read_doc(path: Path, label: str) -> dict[str, Any]:
    """The YAML document: a mapping of known top-level keys."""
    try:
        doc = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" at line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{label}: not valid YAML{at}: {getattr(exc, 'problem', exc)}") from None
    if not isinstance(doc, dict):
        raise ConfigError(f"{label}: expected a mapping with 'params', got {type(doc).__name__}")
    unknown = set(doc) - _TOP_KEYS
    if unknown:
        raise ConfigError(f"{label}: unknown top-level key(s) {', '.join(sorted(unknown))}")
    return doc


def space_device(doc: Mapping[str, Any], device: str | None, facts: Mapping[str, Any], label: str) -> str:
    """The space's device mix, checked against the one asked for and the GPUs this machine has."""
    dev = str(doc.get("device", device or "cpu"))
    if dev not in DEVICES:
        raise ConfigError(f"{label}: device must be one of {', '.join(DEVICES)}, got {dev!r}")
    if device is not None and device != dev:
        raise ConfigError(f"{label}: this space is for device {dev!r}, but --device {device} was asked for")
    if "gpu" in dev and not facts.get("gpus"):
        raise ConfigError(f"--device {dev} needs a CUDA GPU, and none is visible on this machine")
    return dev


def parse_params(
    raw_params: Any, facts: Mapping[str, Any], label: str
) -> tuple[list[Param], dict[str, dict[Any, str]]]:
    """The parameters, bounds resolved on this machine, and why listed choices were dropped here."""
    if not isinstance(raw_params, dict) or not raw_params:
        raise ConfigError(f"{label}: 'params' must be a non-empty mapping of parameter -> spec")
    params: list[Param] = []
    # Why listed choices were dropped on this machine (a missing package...), for the defaults check.
    dropped: dict[str, dict[Any, str]] = {}
    for name, spec in raw_params.items():
        where = f"{label}: params.{name}"
        if name not in FIELDS and name != LAYOUT:
            raise ConfigError(f"{where}: not an engine setting (known: {', '.join(sorted([*FIELDS, LAYOUT]))})")
        if not isinstance(spec, dict):
            raise ConfigError(f"{where}: expected a mapping with 'type', got {spec!r}")
        bad = set(spec) - _PARAM_KEYS
        if bad:
            raise ConfigError(f"{where}: unknown key(s) {', '.join(sorted(bad))}")
        kind = spec.get("type")
        if kind not in ("int", "float", "categorical", "layout"):
            raise ConfigError(f"{where}.type: must be int, float, categorical or layout, got {kind!r}")
        if (kind == "layout") != (name == LAYOUT):
            raise ConfigError(f"{where}.type: the replica layout is the parameter {LAYOUT}, of type layout")
        if kind == "layout":
            param = _layout_param(spec, facts, where)
        elif kind == "categorical":
            param, dropped[name] = _categorical_param(name, spec, where)
        else:
            param = _range_param(name, kind, spec, facts, where)
        if spec.get("when") is not None:
            param = dataclasses.replace(param, when=_parse_when(spec["when"], facts, params, f"{where}.when"))
        params.append(param)
    if LAYOUT in {p.name for p in params} and set(LAYOUT_FIELDS) & {p.name for p in params}:
        raise ConfigError(f"{label}: params: {LAYOUT} already sets cpu_models and cpu_threads; drop them")
    return params, dropped


def _parse_when(raw: Any, facts: Mapping[str, Any], earlier: list[Param], where: str) -> tuple[Any, ...]:
    """A parameter's conditions: an expression, or a list of expressions and ``{parameter: [values]}`` mappings
    naming parameters listed before it."""
    conds = raw if isinstance(raw, list) else [raw]
    known = set(facts) | {q.name for q in earlier} | set(FIELDS) | {"true", "false", "True", "False"}
    out: list[Any] = []
    for cond in conds:
        if isinstance(cond, str):
            missing = expressions.names(expressions.parse(cond, where)) - known
            if missing:
                raise ConfigError(f"{where}: unknown name(s) {', '.join(sorted(missing))}")
            out.append(cond)
        elif isinstance(cond, dict) and all(isinstance(v, list) for v in cond.values()):
            unknown = [k for k in cond if k not in {q.name for q in earlier}]
            if unknown:
                raise ConfigError(f"{where}: {', '.join(map(str, unknown))} is not a parameter listed before this one")
            out.append({k: tuple(v) for k, v in cond.items()})
        else:
            raise ConfigError(f"{where}: each condition is an expression or a {{parameter: [values]}} mapping")
    return tuple(out)


def _layout_param(spec: Mapping[str, Any], facts: Mapping[str, Any], where: str) -> Param:
    """The replica layout: every ``MxT`` with at most ``high`` threads in all (see :func:`layouts_for`)."""
    if "high" not in spec:
        raise ConfigError(f"{where}.high: missing (the most model threads in all, e.g. cores)")
    high = int(_resolve_number(spec["high"], facts, f"{where}.high"))
    low = int(_resolve_number(spec.get("low", 1), facts, f"{where}.low"))
    if high < 1 or low < 1 or low > high:
        raise ConfigError(f"{where}: needs 1 <= low (fewest replicas) <= high (most threads), got {low} and {high}")
    return Param(LAYOUT, "layout", low, high, choices=layouts_for(high, low))


def _categorical_param(name: str, spec: Mapping[str, Any], where: str) -> tuple[Param, dict[Any, str]]:
    """A categorical parameter, its choices filtered to what this machine runs, and why others were dropped."""
    choices = spec.get("choices")
    if not isinstance(choices, list) or not choices:
        raise ConfigError(f"{where}.choices: a categorical parameter needs a non-empty list")
    # Optuna stores only these types; anything else would fail inside a trial, not here.
    odd = [c for c in choices if c is not None and not isinstance(c, str | int | float)]
    if odd:
        raise ConfigError(f"{where}.choices: each choice must be a string, number or boolean, got {odd[0]!r}")
    dropped: dict[Any, str] = {}
    if name == "cpu_backend":
        choices, dropped = _usable_backends(choices, where)
    elif name == "gpu_backend":
        unknown = [c for c in choices if c not in GPU_BACKENDS]
        if unknown:
            raise ConfigError(f"{where}.choices: unknown gpu backend(s) {', '.join(map(str, unknown))}")
    elif name == "decode":
        choices, dropped = _usable_decoders(choices, where)
    return Param(name, "categorical", choices=tuple(choices)), dropped


def _range_param(name: str, kind: str, spec: Mapping[str, Any], facts: Mapping[str, Any], where: str) -> Param:
    """An int or float range, its bounds resolved on this machine."""
    for key in ("low", "high"):
        if key not in spec:
            raise ConfigError(f"{where}.{key}: missing (a range needs low and high)")
    low = _resolve_number(spec["low"], facts, f"{where}.low")
    high = _resolve_number(spec["high"], facts, f"{where}.high")
    if kind == "int":
        low, high = int(low), int(high)
    log = bool(spec.get("log", False))
    if high < low:
        raise ConfigError(f"{where}: high ({high}) is below low ({low}) on this machine")
    if log and low <= 0:
        raise ConfigError(f"{where}.log: a log range needs low > 0, got {low}")
    step = spec.get("step")
    if step is not None and (not isinstance(step, int | float) or isinstance(step, bool) or step <= 0):
        raise ConfigError(f"{where}.step: must be a positive number, got {step!r}")
    if step is not None:
        expressions.check_number(step, "the step", f"{where}.step")  # .inf would reach Optuna otherwise
    if log and step not in (None, 1):
        raise ConfigError(f"{where}: log and step cannot be combined")
    return Param(name, kind, low, high, step, log)


def parse_fixed(raw: Any, facts: Mapping[str, Any], label: str) -> dict[str, Any]:
    """Settings every trial shares; numeric ones may be expressions over machine facts."""
    fixed = raw or {}
    if not isinstance(fixed, dict):
        raise ConfigError(f"{label}: 'fixed' must be a mapping")
    for name in fixed:
        if name not in FIELDS:
            raise ConfigError(f"{label}: fixed.{name}: not an engine setting")
    # Strings are expressions only where the engine setting is numeric; elsewhere they are values.
    numeric = {n for n, f in FIELDS.items() if isinstance(f.default, int | float) and not isinstance(f.default, bool)}
    return {k: _resolve(v, facts, f"{label}: fixed.{k}") if k in numeric else v for k, v in fixed.items()}


def parse_constraints(raw: Any, known: set[str], label: str) -> list[str]:
    """Constraint expressions, each parsed now and using only ``known`` names (or true/false)."""
    constraints = raw or []
    if not isinstance(constraints, list) or not all(isinstance(c, str) for c in constraints):
        raise ConfigError(f"{label}: 'constraints' must be a list of expression strings")
    known = known | {"true", "false", "True", "False"}
    for i, expr in enumerate(constraints):
        tree = expressions.parse(expr, f"{label}: constraints[{i}]")
        missing = expressions.names(tree) - known
        if missing:
            raise ConfigError(f"{label}: constraints[{i}]: unknown name(s) {', '.join(sorted(missing))}")
    return constraints


def parse_defaults(raw: Any, params: list[Param], facts: Mapping[str, Any], label: str) -> dict[str, Any]:
    """Trial 0's values by parameter; ranged ones may be expressions over machine facts."""
    defaults = raw or {}
    if not isinstance(defaults, dict):
        raise ConfigError(f"{label}: 'defaults' must be a mapping")
    pnames = {p.name for p in params}
    for k in defaults:
        if k not in pnames:
            raise ConfigError(f"{label}: defaults.{k}: not a parameter of this space")
    ranged = {p.name for p in params if p.type in ("int", "float")}
    out = {
        k: _resolve_number(v, facts, f"{label}: defaults.{k}") if k in ranged and v is not None else v
        for k, v in defaults.items()
    }
    if out.get(LAYOUT) is not None:
        out[LAYOUT] = _layout_default(out[LAYOUT], facts, f"{label}: defaults.{LAYOUT}")
    return out


def _layout_default(value: Any, facts: Mapping[str, Any], where: str) -> str:
    """A layout default written ``[replicas, threads]`` (each a number or an expression), as its label."""
    if isinstance(value, str):
        parse_layout(value)
        return value
    if not isinstance(value, list) or len(value) != 2:
        raise ConfigError(f"{where}: write the default layout as [replicas, threads], got {value!r}")
    return layout_label(*(int(_resolve_number(v, facts, f"{where}[{i}]")) for i, v in enumerate(value)))


def check_categorical_default(param: Param, value: Any, dropped: Mapping[Any, str], where: str) -> None:
    """Refuse a categorical default outside the (machine-filtered) choices: Optuna would fail trial 0 on it."""
    if param.type not in ("categorical", "layout") or value is None or value in param.choices:
        return
    choices = ", ".join(map(str, param.choices))
    # Compared one by one: a default may be unhashable (a YAML list), which a dict lookup would raise on.
    why = next((reason for choice, reason in dropped.items() if choice == value), None)
    if why is not None:
        raise ConfigError(f"{where}: {value!r} is not usable on this machine ({why}); choices left: {choices}")
    raise ConfigError(f"{where}: {value!r} is not one of the choices ({choices})")


def _usable_backends(choices: list[Any], where: str) -> tuple[list[Any], dict[Any, str]]:
    """Backend choices this machine can run (eager always stays), and why each dropped one cannot run."""
    unknown = [c for c in choices if c not in CPU_BACKENDS]
    if unknown:
        raise ConfigError(f"{where}.choices: unknown backend(s) {', '.join(map(str, unknown))}")
    reasons = {c: backends.backend_unavailable(str(c), "cpu") for c in choices}
    usable = [c for c in choices if reasons[c] is None]
    return usable or ["eager"], {c: why for c, why in reasons.items() if why is not None}


def _usable_decoders(choices: list[Any], where: str) -> tuple[list[Any], dict[Any, str]]:
    """Decode placements this machine can run (the CPU always stays), and why a dropped one cannot run."""
    unknown = [c for c in choices if c not in DECODE_PLACEMENTS]
    if unknown:
        raise ConfigError(f"{where}.choices: unknown decode placement(s) {', '.join(map(str, unknown))}")
    from autotune.preprocess.decoders import gpu_decoder_unavailable

    why = gpu_decoder_unavailable()
    usable = [c for c in choices if c != "gpu" or why is None]
    return usable or ["cpu"], ({"gpu": why} if why and "gpu" in choices else {})
