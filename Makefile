# `make demo` and `make test` are the two commands; both set up .venv first.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install demo test test-all test-deps lint clean gpu-wheels gpu-check

install: $(STAMP)

# Idempotent: the stamp is rebuilt only when the project's requirements change.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# torch first, pinned to the CPU build on local disk, so nothing pulls a CUDA build.
	$(BIN)/python -m pip show torch >/dev/null 2>&1 || $(BIN)/python -m pip install -q "torch==2.13.0"
	$(BIN)/python -m pip install -q -e ".[test,onnx,openvino,postgres,ray]"
	touch $(STAMP)

demo: install
	$(BIN)/autotune demo

# The dashboard test drives Debian's headless Chromium, and the shared-study test starts Debian's PostgreSQL server
# (its binaries live in /usr/lib/postgresql/<version>/bin, off PATH); without them (no root, no apt) those tests
# are skipped.
test-deps:
	@command -v chromium >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) ; } || \
		echo "note: chromium not installed; the dashboard browser test will be skipped"
	@{ command -v initdb >/dev/null 2>&1 || ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 ; } || \
		{ [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && (apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null) ; } || \
		echo "note: postgresql not installed; the shared-study test will be skipped"

# `slow` checks (ViT-B/32-sized models, compiled backends, the tuner benchmark) run in `make test-all`.
# Two xdist workers, a test file each at a time: most tests wait on spawned workers and disk, so two share 2
# cores well. The trained model is built once for both (a file lock in tests/conftest.py).
test: install test-deps
	$(BIN)/python -m pytest -q -n 2 --dist loadfile -m "not gpu and not slow" -p no:cacheprovider

test-all: install test-deps
	$(BIN)/python -m pytest -q -p no:cacheprovider

# ruff (style, imports), mypy (types), pylint's duplicate-code check alone (6 lines or more repeated), the import
# layers and cycles (import-linter's contracts in pyproject.toml), and docs/benchmarks.md against its run files.
lint: install
	$(BIN)/ruff check autotune tests
	$(BIN)/mypy autotune
	$(BIN)/pylint --disable=all --enable=duplicate-code --min-similarity-lines=6 --score=n autotune
	$(BIN)/lint-imports
	$(BIN)/python -m autotune.bench.runs render --check

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache

# ---- The prepared GPU check (README, "The GPU check"). The GPU machine has no network and its own python3
# with torch 2.11, torchvision, transformers, numpy...; what the check needs beyond that travels as wheels for
# its Python 3.12, downloaded here by `make gpu-wheels` into .gpu-wheels/ (ignored; the whole working tree
# travels, under 64 MiB). Exactly these: optuna and its storage (SQLAlchemy, Alembic, Mako, colorlog), the
# dashboard package the study writes its note with (optuna-dashboard, bottle), and simplejpeg. openvino and the
# rest of the CPU extras stay behind.
GPU_WHEELS := .gpu-wheels
GPU_WHEEL_PINS := optuna==5.0.0 sqlalchemy==2.1.9 alembic==1.20.1 mako==1.4.3 colorlog==6.12.0 \
	optuna-dashboard==0.21.0 bottle==0.13.4 simplejpeg==1.9.0
GPU_PLATFORMS := $(foreach n,2_28 2_27 2_17,--platform manylinux_$(n)_x86_64) --platform manylinux2014_x86_64
GPU_VENV := .gpu-venv
OUT ?= gpu-check-out

gpu-wheels:
	mkdir -p $(GPU_WHEELS)
	$(PY) -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
		$(GPU_PLATFORMS) -d $(GPU_WHEELS) $(GPU_WHEEL_PINS)
	@du -cb $(GPU_WHEELS)/*.whl | tail -1 | awk '{ printf "gpu wheels: %.1f MiB\n", $$1 / 1048576; \
		if ($$1 > 48 * 1048576) { print "error: over 48 MiB of the 64 MiB the working tree may take"; exit 1 } }'

# DRY_RUN=1: everything that needs no CUDA, here (tiny model, small corpus, CPU stages), the same JSON files.
# Otherwise, on the GPU machine: a venv that sees python3's own packages (torch 2.11 stays as it is), the wheels
# installed with --no-deps, then the check (at most 5 minutes, each stage's JSON written as it ends).
gpu-check:
ifdef DRY_RUN
	$(MAKE) install
	$(BIN)/python -m autotune.cli bench gpu-check --dry-run --out $(OUT)
else
	python3 -m venv --without-pip --system-site-packages $(GPU_VENV)
	# python3 there is itself a venv (/opt/torch/.venv): point the new one at its packages, where torch lives.
	python3 -c "import site; print('\n'.join(f'import site; site.addsitedir({d!r})' for d in site.getsitepackages()))" > \
		"$$($(GPU_VENV)/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/gpu-image.pth"
	$(GPU_VENV)/bin/python -m pip install -q --no-index --no-deps --no-compile $(GPU_WHEELS)/*.whl
	PYTHONPATH=$(CURDIR) PYTHONUNBUFFERED=1 $(GPU_VENV)/bin/python -m autotune.cli bench gpu-check --out $(OUT)
endif
