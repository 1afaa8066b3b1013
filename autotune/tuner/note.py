"""The study's note in optuna-dashboard: which machine, model, data and space a study measured."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from optuna import Study

    from autotune.machine import MachineInfo
    from autotune.tuner.objective import ScanSpec
    from autotune.tuner.space import SearchSpace


def save_study_note(study: Study, machine: MachineInfo, space: SearchSpace, spec: ScanSpec) -> None:
    """A study note for optuna-dashboard: the machine and the workload."""
    try:
        save_note = _dashboard_save_note()
        save_note(
            study,
            (
                f"# clip-autotune study\n\n**Machine**: {machine.summary()}  \n"
                f"**Machine id**: `{machine.machine_id}`\n\n"
                f"**Objective**: steady-state images/s over {spec.rounds} batch rounds of every replica, after "
                f"{spec.warmup_rounds} warm-up round(s); the last round (drain) untimed  \n"
                f"**Model**: `{spec.model}`  \n**Dataset**: `{spec.dataset}`  \n"
                f"**Space**: `{space.source}` ({space.device})\n"
            ),
        )
    except Exception:  # the note is a nicety; the study must not depend on the dashboard package
        pass


def _dashboard_save_note() -> Any:
    """optuna-dashboard's ``save_note``, loaded from its own module without the package's ``__init__``.

    The package imports its whole web app on import, and with it scikit-learn through Optuna's fANOVA: 2-4 s
    of every study's start on a 2-core machine, for one function that only needs Optuna. Falls back to the
    plain import if the package is laid out differently.
    """
    name = "optuna_dashboard._note"
    if name in sys.modules:
        return sys.modules[name].save_note
    package = importlib.util.find_spec("optuna_dashboard")  # finds the package without running its __init__
    path = Path(package.origin).with_name("_note.py") if package and package.origin else None
    if path is None or not path.is_file():
        from optuna_dashboard import save_note

        return save_note
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # not registered: the real package, once imported, keeps its own
    return module.save_note
