"""`autotune retrieve` as a library call: defaults, input checks, the profile to run, then retrieval and outputs."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from autotune.data.sources import open_source
from autotune.defaults import DEFAULT_MODEL, default_dataset
from autotune.engine.config import EngineConfig
from autotune.errors import ConfigError, DataError
from autotune.index import EmbeddingIndex
from autotune.machine import detect_machine
from autotune.models.facts import resolve_model, weights_hash
from autotune.progress import Log, ProgressFactory, quiet
from autotune.retrieval._outputs import write_outputs, write_skipped
from autotune.retrieval._result import NoReadableImages, RetrievalResult
from autotune.retrieval._search import retrieve, scan_engine
from autotune.retrieval._sync import safe_default_config
from autotune.tuner.profile import Profile, arch_short, best_unused, find_profile, model_arch

INDEX_DTYPES = ("float16", "float32")


@dataclass(frozen=True, kw_only=True)
class RetrievalOptions:
    """One retrieval as a user asks for it: queries, database, model, profile choice, index policy, outputs.

    ``dataset`` None is the generated corpus (made on first use), ``model`` None the ViT-B/32 stand-in;
    ``profile`` is ``auto`` (this machine's profile for the model's architecture), ``none`` or a profile
    id or file; ``update`` False answers from the index as it stands. ``engine`` is ``local`` (this machine's
    engine) or ``ray`` (a Ray cluster at ``address``: ``auto``, ``HOST:PORT``, or None for a private one here).
    :meth:`validate` refuses what cannot run before any work starts.

    Example:
        >>> opts = RetrievalOptions(queries=("a photo of Felis catus",), dataset="data/", profile="none")
        >>> run_retrieval(opts).hits[0][0].label
    """

    queries: tuple[str, ...]
    dataset: str | None = None
    model: str | None = None
    profile: str = "auto"
    top_k: int = 9
    out: Path = Path("results")
    index_dir: Path | None = None
    use_index: bool = True
    rescan: bool = False
    rebuild_index: bool = False
    index_dtype: str = "float16"
    image_column: str | None = None
    split: str | None = None
    engine: str = "local"
    address: str | None = None
    update: bool = True

    def validate(self) -> RetrievalOptions:
        """Return self, or raise :class:`ConfigError` naming the first impossible setting."""
        if not self.queries or any(not q.strip() for q in self.queries):
            raise ConfigError("empty query: give at least one non-empty text (argument or --queries-file)")
        if self.index_dtype not in INDEX_DTYPES:
            raise ConfigError(f"--index-dtype must be float16 or float32, got {self.index_dtype!r}")
        if self.top_k < 1:
            raise ConfigError(f"--top-k must be >= 1, got {self.top_k}")
        if not self.update and (self.rescan or not self.use_index or self.rebuild_index):
            raise ConfigError("--no-update answers from the index as it stands: not with --rescan, --no-index or "
                              "--rebuild-index")  # fmt: skip
        scan_engine(self.engine, self.address)  # an unknown engine, --address alone, Ray not installed
        return self


def run_retrieval(
    options: RetrievalOptions,
    *,
    progress: ProgressFactory | None = None,
    log: Log | None = None,
    notice: Log | None = None,
) -> RetrievalResult:
    """Retrieve with this machine's tuned profile (or a safe default) and write the results folder.

    Inputs are checked before anything is said or scanned, so a mistake is one line. ``log`` receives news
    a script may silence (the profile used, index updates); ``notice`` what the user must hear even then
    (no profile for the model, a profile from another machine). A database with no readable image raises
    :class:`~autotune.errors.DataError` naming the ``skipped.csv`` written into ``options.out``.
    """
    opts = options.validate()
    say = log or quiet
    model = opts.model or DEFAULT_MODEL
    dataset = opts.dataset or str(default_dataset(progress=progress))
    _check_inputs(opts, dataset, model)
    if model.startswith("synthetic:"):
        say(
            "note: synthetic models have random weights: the ranking below is meaningless "
            "(train one offline with `autotune make-model`)"
        )
    config, profile_id = choose_profile(opts.profile, model, log=say, notice=notice or quiet)
    try:
        result = retrieve(
            opts.queries, dataset=dataset, model=model, top_k=opts.top_k, config=config, index_dir=opts.index_dir,
            use_index=opts.use_index, rescan=opts.rescan, rebuild_index=opts.rebuild_index,
            index_dtype=opts.index_dtype, image_column=opts.image_column, split=opts.split, progress=progress, log=say,
            engine=opts.engine, address=opts.address, profile=profile_id, update=opts.update,
        )  # fmt: skip
    except NoReadableImages as exc:
        raise DataError(f"{exc}; reasons in {write_skipped(opts.out, exc.skipped)}") from None
    write_outputs(result, dataset, opts.out, opts.image_column, opts.split)
    return result


def _check_inputs(opts: RetrievalOptions, dataset: str, model: str) -> None:
    """Open the database, resolve the model and check the index folder: each raises its own one-line error."""
    open_source(dataset, opts.image_column, opts.split)
    resolve_model(model)
    if opts.index_dir is not None and opts.use_index and not opts.rescan:
        EmbeddingIndex(opts.index_dir).claim(create=False)


def choose_config(profile: str, model: str, *, log: Log | None = None, notice: Log | None = None) -> EngineConfig:
    """The engine configuration a retrieval runs: the chosen profile's, else a safe default.

    ``profile`` is ``auto``, ``none``, a profile id or a file. A profile on a backend whose accuracy guard
    was never checked on ``model``'s weights is refused (:class:`ConfigError`, pointing at
    ``autotune verify``). With ``auto`` and no profile for the model's architecture, the safe default runs
    and ``notice`` says so, since an untuned scan is what the user must hear about.
    """
    return choose_profile(profile, model, log=log, notice=notice)[0]


def choose_profile(
    profile: str, model: str, *, log: Log | None = None, notice: Log | None = None
) -> tuple[EngineConfig, str | None]:
    """:func:`choose_config`, with the id of the profile chosen (None for the safe default)."""
    say, tell = log or quiet, notice or quiet
    prof = find_profile(profile, model=model, say=tell)
    if prof is None:
        config = safe_default_config()
        if profile == "auto":
            tell(_fallback_note(model, config))
        return config, None
    from autotune.tuner.profile import guard_ok_for  # imports the inference backends: only with a profile

    if not guard_ok_for(prof, weights_hash(resolve_model(model)[0])):
        raise ConfigError(
            f"the profile runs {prof.config.cpu_backend}/{prof.config.gpu_precision}, whose accuracy guard was "
            f"never checked on {model}: run `autotune verify --model {model}` first (or --profile none)"
        )
    say(f"profile {prof.id or profile}: {prof.config.describe()} ({profile_rate(prof)})")
    return prof.config, prof.id or str(profile)


def _fallback_note(model: str, config: EngineConfig) -> str:
    """Why a retrieval runs the safe default, and the one command that would change it."""
    arch = model_arch(model)
    head = f"no profile in use for this model's architecture ({arch_short(arch)}) on this machine: using the safe "
    head += f"default ({config.describe()})"
    saved = best_unused(detect_machine().machine_id, arch)
    if saved is None:
        return f"{head}; run autotune study --model {model}"
    return (
        f"{head}; profile {saved.id} ({saved.config.describe()}, {profile_rate(saved)}) is saved but not in use: "
        f"autotune profile use {saved.id}"
    )


def profile_rate(prof: Profile) -> str:
    """How fast a profile runs, in words: the validated figure when there is one."""
    if prof.validated_images_per_s is not None:
        text = f"{prof.validated_images_per_s:.1f} images/s validated"
    else:
        text = f"{prof.images_per_s:.1f} images/s in its trials, not validated"
    return text + (", unstable" if prof.unstable else "")
