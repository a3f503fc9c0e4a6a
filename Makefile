# Quickstart: `make demo` and `make test`. Both create/refresh .venv from the pinned lock file.
# `make check` runs the fast tests only (not the ones marked slow), for day-to-day work.
PYTHON ?= python3.11
VENV ?= .venv
LOCK := requirements/lock.txt
# The stamp is keyed by content (lock + pyproject) and by this checkout's path, so a fresh clone,
# a changed pin or a moved checkout reinstalls, and nothing else does.
KEY := $(shell cat $(LOCK) pyproject.toml | sha256sum | cut -c1-16)-$(shell echo $(CURDIR) | sha256sum | cut -c1-8)
STAMP := $(VENV)/.imseg-$(KEY)
BIN := $(VENV)/bin
PYTEST_ARGS ?=

.PHONY: venv demo test check lint browser clean

venv: $(STAMP)

$(STAMP): $(LOCK) pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@# sam2 ships source only and builds against the installed torch: install it after the rest, without CUDA
	grep -v '^sam2==' $(LOCK) > $(VENV)/lock-base.txt
	$(BIN)/pip install --quiet -r $(VENV)/lock-base.txt
	SAM2_BUILD_CUDA=0 $(BIN)/pip install --quiet --no-deps --no-build-isolation $$(grep '^sam2==' $(LOCK))
	$(BIN)/pip install --quiet --no-deps --no-build-isolation -e .
	@rm -f $(VENV)/.imseg-*
	@touch $(STAMP)

demo: venv
	$(BIN)/imseg demo --model mobile-sam

# Headless Chromium for the web-page test; best effort (root + apt), the test skips without it.
browser:
	@command -v chromium >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && \
	  (timeout 600 apt-get update -qq >/dev/null 2>&1; timeout 900 apt-get install -y -qq chromium >/dev/null 2>&1) \
	  && echo "installed chromium" || echo "chromium not installed: browser tests will skip"; }

test: venv browser
	$(BIN)/python -m pytest -n 2 --timeout 900 --durations=15 $(PYTEST_ARGS)

check: venv
	$(BIN)/python -m pytest -n 2 --timeout 900 -m "not slow" --durations=15 $(PYTEST_ARGS)

lint: venv
	$(BIN)/ruff check src tests benchmarks

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info src/*.egg-info
