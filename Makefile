# `make demo` and `make test` are the two commands; both set up .venv first.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install demo test test-all test-deps lint clean

install: $(STAMP)

# Idempotent: the stamp is rebuilt only when the project's requirements change.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# torch first, pinned to the CPU build on local disk, so nothing pulls a CUDA build.
	$(BIN)/python -m pip show torch >/dev/null 2>&1 || $(BIN)/python -m pip install -q "torch==2.13.0"
	$(BIN)/python -m pip install -q -e ".[test,onnx,openvino,ray]"
	touch $(STAMP)

demo: install
	$(BIN)/autotune demo

# The dashboard test drives Debian's headless Chromium; without it (no root, no apt) that test is skipped.
test-deps:
	@command -v chromium >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) ; } || \
		echo "note: chromium not installed; the dashboard browser test will be skipped"

# `slow` checks (ViT-B/32-sized models, compiled backends, the tuner benchmark) run in `make test-all`.
# Two xdist workers, a test file each at a time: most tests wait on spawned workers and disk, so two share 2
# cores well. The trained model is built once for both (a file lock in tests/conftest.py).
test: install test-deps
	$(BIN)/python -m pytest -q -n 2 --dist loadfile -m "not gpu and not slow" -p no:cacheprovider

test-all: install test-deps
	$(BIN)/python -m pytest -q -p no:cacheprovider

# ruff (style, imports), mypy (types), and pylint's duplicate-code check alone (6 lines or more repeated).
lint: install
	$(BIN)/ruff check autotune tests
	$(BIN)/mypy autotune
	$(BIN)/pylint --disable=all --enable=duplicate-code --min-similarity-lines=6 --score=n autotune

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
