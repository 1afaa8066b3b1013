"""Search spaces: YAML files of typed parameters, machine-shaped bounds and constraints."""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import autotune.tuner.expressions as expressions
from autotune.engine.config import EngineConfig
from autotune.errors import ConfigError
from autotune.tuner.space_file import (
    DEVICES,
    FIELDS,
    LAYOUT,
    LAYOUT_FIELDS,
    Param,
    builtin_space_path,
    check_categorical_default,
    layout_label,
    layouts_for,
    parse_constraints,
    parse_defaults,
    parse_fixed,
    parse_layout,
    parse_params,
    read_doc,
    space_device,
    space_path,
)

__all__ = ["DEVICES", "Param", "SearchSpace", "builtin_space_path", "layout_label", "layouts_for", "load_space",
           "parse_layout"]


@dataclass(frozen=True)
class SearchSpace:
    """A device mix's space, resolved for one machine: parameters, fixed settings, constraints, defaults.

    Example:
        >>> space = load_space("cpu", machine_facts={"cores": 2, "gpus": 0})
        >>> space.to_config(space.default_params()).describe()
    """

    name: str
    device: str
    params: tuple[Param, ...]
    fixed: Mapping[str, Any]
    constraints: tuple[str, ...]
    defaults: Mapping[str, Any]
    facts: Mapping[str, Any]
    source: str
    # The file as it was given (source is only its name): error messages name it so it can be found.
    path: str = ""

    def distributions(self) -> dict[str, Any]:
        """Optuna distributions by parameter name."""
        return {p.name: p.distribution() for p in self.params}

    def suggest(self, trial: Any) -> dict[str, Any]:
        """Ask an Optuna trial for every parameter whose ``when`` holds (define-by-run: the others keep defaults)."""
        out: dict[str, Any] = {}
        for p in self.params:
            if not self._applies(p, out):
                continue
            if p.type in ("categorical", "layout"):
                out[p.name] = trial.suggest_categorical(p.name, list(p.choices))
            elif p.type == "int":
                out[p.name] = trial.suggest_int(p.name, int(p.low), int(p.high), step=int(p.step or 1), log=p.log)
            else:
                out[p.name] = trial.suggest_float(p.name, float(p.low), float(p.high), step=p.step, log=p.log)
        return out

    def _applies(self, param: Param, params: Mapping[str, Any]) -> bool:
        """Whether ``param`` is asked for, given the parameters chosen before it."""
        if param.when is None:
            return True
        where = f"{self.path or self.source}: params.{param.name}.when"
        env = self.values(params)
        for cond in param.when:
            if isinstance(cond, str):
                if not expressions.evaluate(expressions.parse(cond, where), env, where):
                    return False
            elif not all(env.get(name) in allowed for name, allowed in cond.items()):
                return False
        return True

    def values(self, params: Mapping[str, Any]) -> dict[str, Any]:
        """Machine facts, fixed settings and ``params``, with a replica layout spelt out as its engine settings."""
        env = {**self.facts, **self.fixed, **params}
        if LAYOUT in params:
            env.update(zip(LAYOUT_FIELDS, parse_layout(params[LAYOUT]), strict=True))
        return env

    def admits(self, params: Mapping[str, Any]) -> bool:
        """Whether ``params`` is a point of this space: every value within its parameter's domain, no constraint
        broken (a layout the machine's cores cannot hold is not one of its choices)."""
        for p in self.params:
            if p.name not in params:
                continue
            value = params[p.name]
            if p.type in ("categorical", "layout"):
                if value not in p.choices:
                    return False
            elif not p.low <= value <= p.high:
                return False
        return not self.violations(params)

    def violations(self, params: Mapping[str, Any]) -> list[str]:
        """The constraints a proposal breaks (empty when feasible)."""
        env = self.values(params)
        bad = []
        for i, expr in enumerate(self.constraints):
            where = f"{self.path or self.source}: constraints[{i}]"
            if not expressions.evaluate(expressions.parse(expr, where), env, where):
                bad.append(expr)
        return bad

    def checked_config(self, params: Mapping[str, Any], cores: int, gpus: int) -> tuple[EngineConfig | None, list[str]]:
        """A proposal's validated engine configuration, or None and why not (broken constraints, engine checks)."""
        bad = self.violations(params)
        if bad:
            return None, bad
        try:
            return self.to_config(params).validate(cores=cores, gpus=gpus), []
        except ConfigError as exc:
            return None, [str(exc)]

    def to_config(self, params: Mapping[str, Any]) -> EngineConfig:
        """Engine configuration for a proposal (fixed settings merged in; parameters not asked for: defaults)."""
        asked = {**{k: v for k, v in self.defaults.items() if k not in params}, **params}
        values = {k: v for k, v in self.values(asked).items() if k in FIELDS}
        return EngineConfig.from_dict(values)

    def default_params(self) -> dict[str, Any]:
        """Trial 0: the space's defaults, clipped into the machine's bounds (a parameter not asked for: left out)."""
        out: dict[str, Any] = {}
        for p in self.params:
            if not self._applies(p, out):
                continue
            value = self.defaults.get(p.name)
            if value is None:
                value = p.choices[0] if p.type in ("categorical", "layout") else p.low
            if p.type in ("int", "float"):
                value = min(max(value, p.low), p.high)
            out[p.name] = value
        return out

    def with_layout(self, params: Mapping[str, Any], models: int, threads: int) -> dict[str, Any]:
        """``params`` with ``models`` replicas of ``threads`` threads, in whichever form the space takes them."""
        if any(p.name == LAYOUT for p in self.params):
            return {**params, LAYOUT: layout_label(models, threads)}
        return {**params, "cpu_models": models, "cpu_threads": threads}

    def largest(self, name: str, fallback: Any) -> Any:
        """The largest value ``name`` can take in this space: its upper bound, largest choice or fixed value."""
        for p in self.params:
            if p.name == LAYOUT and name in LAYOUT_FIELDS:
                return max(parse_layout(c)[LAYOUT_FIELDS.index(name)] for c in p.choices)
            if p.name == name:
                return max(p.choices) if p.type == "categorical" else p.high
        return self.fixed.get(name, fallback)

    def grid(self) -> list[dict[str, Any]]:
        """Every feasible proposal (for exhaustive comparisons on small spaces)."""
        out: list[dict[str, Any]] = []
        for vals in itertools.product(*(p.values() for p in self.params)):
            combo: dict[str, Any] = {}
            for p, v in zip(self.params, vals, strict=True):
                if self._applies(p, combo):
                    combo[p.name] = v
            if combo not in out and not self.violations(combo):
                out.append(combo)
        return out


def load_space(space: str | Path, *, machine_facts: Mapping[str, Any], device: str | None = None) -> SearchSpace:
    """Read and validate a space file (or a built-in name) and shape it to the machine.

    ``space`` is ``cpu``, ``gpu``, ``cpu+gpu`` (the spaces shipped with the package) or a YAML file;
    ``machine_facts`` are the names bounds and constraints may use (``cores``, ``gpus``...); ``device``, when
    given, must match the file's. Every problem is one ConfigError line naming the file, the key and what is
    wrong.

    Example:
        >>> space = load_space("cpu", machine_facts={"cores": 2, "gpus": 0})
        >>> space.device, space.to_config(space.default_params()).cpu_models  # doctest: +SKIP
        ('cpu', 1)
    """
    path = space_path(space)
    # Every message starts with the file as the user named it (a built-in space: its installed path).
    label = str(path)
    doc = read_doc(path, label)
    facts = dict(machine_facts)
    dev = space_device(doc, device, facts, label)
    params, dropped = parse_params(doc.get("params"), facts, label)
    fixed = parse_fixed(doc.get("fixed"), facts, label)
    known = set(facts) | {p.name for p in params} | set(fixed) | set(LAYOUT_FIELDS)
    constraints = parse_constraints(doc.get("constraints"), known, label)
    defaults = parse_defaults(doc.get("defaults"), params, facts, label)
    for p in params:
        check_categorical_default(p, defaults.get(p.name), dropped.get(p.name, {}), f"{label}: defaults.{p.name}")
    space_obj = SearchSpace(
        name=str(doc.get("name", path.stem)),
        device=dev,
        params=tuple(params),
        fixed=fixed,
        constraints=tuple(constraints),
        defaults=defaults,
        facts=facts,
        source=path.name,
        path=label,
    )
    bad_default = space_obj.violations(space_obj.default_params())
    if bad_default:
        i = constraints.index(bad_default[0])
        raise ConfigError(
            f"{label}: constraints[{i}]: the defaults break constraint {bad_default[0]!r} on this machine"
        )
    return space_obj
