"""Where studies live: the one place that opens Optuna storages, finds a study, and queries its trials.

The study writes through a storage with a heartbeat (a killed run's RUNNING trials are failed and re-queued);
reports and dashboards read through a plain one (reading never fails anyone's trials) and refuse a storage
that does not exist rather than create an empty one. Several workers (machines) may share one study on a
database server: :func:`claim` is the atomic "first one wins" they agree through (who enqueues the default,
who validates the pick). Optuna is imported only when a storage is opened.
"""

from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Callable, Hashable, Iterable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from autotune.errors import ConfigError, one_line
from autotune.machine import detect_machine
from autotune.tuner.profile import studies_dir

if TYPE_CHECKING:
    from optuna.storages import RDBStorage
    from optuna.study import Study
    from optuna.trial import FrozenTrial

DB_NAME = "autotune.db"
SQLITE_TIMEOUT_S = 30  # a study and a report may share one SQLite file: wait for its lock, do not fail
HEARTBEAT_S = 5.0  # a running trial's heartbeat period
GRACE_FACTOR = 4  # a trial whose heartbeat stopped this many periods ago belongs to a dead worker
SCHEMA_ATTEMPTS = 5  # tries at opening a storage whose tables another worker is creating at the same moment
_SCHEMA_RACE = ("already exists", "duplicate key")  # how PostgreSQL, MySQL and SQLite word that race


def default_storage(create: bool = True) -> str:
    """The default storage URL: one SQLite file under studies/ (its folder created only when ``create``)."""
    folder = studies_dir()
    if create:
        folder.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{(folder / DB_NAME).resolve()}"


def check_exists(url: str) -> str:
    """Refuse a SQLite URL or storage file path that does not exist (opening it would create an empty one)."""
    if url.startswith("sqlite:///"):
        path = url[len("sqlite:///") :]
        if path and path != ":memory:" and not Path(path).is_file():
            raise ConfigError(f"no study found in {url}: run `autotune study` first")
    elif "://" not in url and not Path(url).is_file():
        raise ConfigError(f"no study found in {url}: run `autotune study` first")
    return url


def _rdb(url: str, **kwargs: Any) -> RDBStorage:
    """An RDB storage for ``url``; a storage that cannot be opened is one line."""
    import optuna

    engine_kwargs: dict[str, Any] | None = None
    if url.startswith("sqlite"):
        engine_kwargs = {"connect_args": {"timeout": SQLITE_TIMEOUT_S}}
    elif url.startswith(("postgresql", "mysql")):
        # A worker idles on its connection for a whole trial (minutes): a server or a proxy may have closed it.
        engine_kwargs = {"pool_pre_ping": True}
    for attempt in range(1, SCHEMA_ATTEMPTS + 1):
        try:
            return optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs, **kwargs)
        except Exception as exc:
            # Workers started together on an empty database race to create Optuna's tables: the losers fail
            # on a table, type or version row the winner has just made; a second look finds the schema done.
            if attempt < SCHEMA_ATTEMPTS and any(mark in str(exc).lower() for mark in _SCHEMA_RACE):
                time.sleep(0.25 * attempt)
                continue
            raise ConfigError(f"cannot open study storage {url}: {one_line(exc)}") from None
    raise AssertionError("unreachable")  # pragma: no cover - the last attempt returns or raises


def writer_storage(url: str, heartbeat_s: float = HEARTBEAT_S) -> RDBStorage:
    """The study's storage: its heartbeat fails trials left RUNNING by a killed run and re-queues their params.

    A running trial beats every ``heartbeat_s`` seconds; one silent for ``GRACE_FACTOR`` periods is failed by
    the next worker that looks, and its parameters are queued again (once) for any worker to measure.
    """
    if heartbeat_s < 1:
        raise ConfigError(f"--heartbeat must be at least 1 second (got {heartbeat_s:g})")
    try:
        # Optuna >= 4.9 calls it RetryHeartbeatStaleTrialCallback; older releases use the failed-trial hook.
        from optuna.storages import RetryHeartbeatStaleTrialCallback

        retry: dict[str, Any] = {"heartbeat_stale_trial_callback": RetryHeartbeatStaleTrialCallback(max_retry=1)}
    except ImportError:  # pragma: no cover - older Optuna
        from optuna.storages import RetryFailedTrialCallback

        retry = {"failed_trial_callback": RetryFailedTrialCallback(max_retry=1)}
    # Optuna takes whole seconds.
    beat = max(1, round(heartbeat_s))
    return _rdb(url, heartbeat_interval=beat, grace_period=GRACE_FACTOR * beat, **retry)


def worker_name() -> str:
    """This worker as the study records it: host and process id (``AUTOTUNE_WORKER`` overrides it)."""
    return os.environ.get("AUTOTUNE_WORKER") or f"{socket.gethostname()}:{os.getpid()}"


def claim(storage: RDBStorage, study_name: str, key: str, value: dict[str, Any]) -> tuple[bool, dict[str, Any]]:
    """Take ``key`` for this worker, atomically across every worker of the study: (won, the holder's value).

    The claim is one INSERT into the study's user attributes, whose (study, key) pair is a unique key on every
    database Optuna supports: of workers racing for it, exactly one insert commits and the others fail on the
    key and read the winner's value. Optuna's own ``set_user_attr`` would not do: it reads, then writes, and
    silently drops a write that loses such a race. The claim stays in the study (the dashboard shows it).

    Example:
        >>> won, holder = claim(storage, "study", "claim:pick:20", {"worker": worker_name()})
        >>> holder["worker"]  # doctest: +SKIP
        'node-3:4121'
    """
    import sqlalchemy
    from sqlalchemy.exc import IntegrityError

    study_id = storage.get_study_id_from_name(study_name)
    value = {**value, "at": datetime.now(UTC).isoformat(timespec="seconds")}
    insert = sqlalchemy.text(
        "INSERT INTO study_user_attributes (study_id, key, value_json) VALUES (:study_id, :key, :value_json)"
    )
    try:
        with storage.engine.begin() as conn:
            conn.execute(insert, {"study_id": study_id, "key": key, "value_json": json.dumps(value)})
        return True, value
    except IntegrityError:
        holder = storage.get_study_user_attrs(study_id).get(key)
        return False, holder if isinstance(holder, dict) else {"worker": str(holder)}


def reader_storage(url: str) -> RDBStorage:
    """A storage for reading an existing study (no heartbeat: reading never fails anyone's trials)."""
    return _rdb(check_exists(url))


def fail_orphaned_running(study: Study) -> None:
    """Mark RUNNING trials whose heartbeat stopped (a killed run) as failed now, re-queueing their params."""
    import optuna

    if hasattr(optuna.storages, "fail_stale_trials"):
        optuna.storages.fail_stale_trials(study)


def pick_study(storage: RDBStorage, url: str, study_name: str | None) -> str:
    """The named study, or this machine's most recent one, or the most recent one of all."""
    studies = storage.get_all_studies()
    if not studies:
        raise ConfigError(f"no study found in {url}: run `autotune study` first")
    names = [s.study_name for s in studies]
    if study_name is not None:
        if study_name not in names:
            raise ConfigError(f"study {study_name!r} not found in {url} (studies: {', '.join(names)})")
        return study_name
    machine_id = detect_machine().machine_id
    ids = {s.study_name: storage.get_study_id_from_name(s.study_name) for s in studies}

    def recency(name: str) -> tuple[float, int]:
        """When the study's latest trial started (its id breaks ties)."""
        trials = storage.get_all_trials(ids[name], deepcopy=False)
        starts = [t.datetime_start.timestamp() for t in trials if t.datetime_start is not None]
        return (max(starts, default=0.0), ids[name])

    mine = [n for n in names if n.startswith(machine_id)]
    return max(mine or names, key=recency)


def load_study(url: str, study_name: str | None = None) -> Study:
    """An existing study for reading: the named one, else this machine's latest (see :func:`pick_study`)."""
    import optuna

    storage = reader_storage(url)
    name = pick_study(storage, url, study_name)
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    return optuna.load_study(study_name=name, storage=storage)


def is_infeasible(trial: FrozenTrial) -> bool:
    """Whether the trial was a proposal the space or the guard refused (recorded as pruned, never run)."""
    from optuna.trial import TrialState

    return trial.state == TrialState.PRUNED and bool(trial.user_attrs.get("infeasible"))


def state_counts(trials: Iterable[FrozenTrial]) -> dict[str, int]:
    """Trials by state, lower case, with infeasible proposals apart from pruned trials."""
    counts: dict[str, int] = {}
    for t in trials:
        key = "infeasible" if is_infeasible(t) else t.state.name.lower()
        counts[key] = counts.get(key, 0) + 1
    return counts


def trial_value(trial: FrozenTrial) -> float:
    """A trial's objective value (images/s); 0.0 for a trial without one (complete trials always have one)."""
    return float(trial.value) if trial.value is not None else 0.0


def complete_trials(trials: Iterable[FrozenTrial]) -> list[FrozenTrial]:
    """The trials that completed with a value."""
    from optuna.trial import TrialState

    return [t for t in trials if t.state == TrialState.COMPLETE and t.value is not None]


def _param_set(params: dict[str, Any]) -> Hashable:
    """A trial's whole parameter set, as a key."""
    return tuple(sorted(params.items()))


def distinct_top(
    trials: Sequence[FrozenTrial], top: int | None = None, key: Callable[[dict[str, Any]], Hashable] = _param_set
) -> list[FrozenTrial]:
    """Complete trials best first, one per ``key`` of their params (default: per parameter set, so a repeat of
    measured params counts once), ``top`` at most.

    Ties keep the earlier trial, since the sort is stable on trial order.
    """
    out: list[FrozenTrial] = []
    seen: set[Hashable] = set()
    for t in sorted(complete_trials(trials), key=lambda t: -trial_value(t)):
        k = key(t.params)
        if k in seen:
            continue
        seen.add(k)
        out.append(t)
        if top is not None and len(out) == top:
            break
    return out
