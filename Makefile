# wire-mpc — `make demo` and `make test` work on a fresh Debian bookworm machine: each
# installs what it needs (Debian packages, a virtualenv from the hash-pinned lock).

VENV          := .venv
PY            := $(VENV)/bin/python
APT_PACKAGES  := softhsm2 systemd libsystemd-dev pkg-config python3-dev gcc
export PYTHONPATH := $(CURDIR)

.PHONY: all demo test lint typecheck unit bench lock venv clean

all: test

venv:
	@tools/bootstrap $(VENV) requirements-dev.lock $(APT_PACKAGES)

# Tests and the demo run beside a private journald (tools/with-journald), so the nodes'
# audit records are real and the host's journal is untouched.
demo: venv
	tools/with-journald $(PY) tools/demo.py

test: lint typecheck unit

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

typecheck: venv
	$(VENV)/bin/mypy appliance hsm api

unit: venv
	tools/with-journald $(PY) -m pytest

bench: venv
	$(PY) bench/frost.py --output bench/results/frost.json
	$(PY) bench/keystore.py --output bench/results/hsm.json
	tools/with-journald $(PY) bench/ceremony.py --output bench/results/ceremony.json
	$(PY) bench/chain.py --output bench/results/chain.json
	tools/with-journald $(PY) bench/control_api.py --output bench/results/api.json
	tools/with-journald $(PY) bench/workflows.py --output bench/results/workflows.json

# Re-resolve the locks after editing pyproject.toml (needs the network).
lock: venv
	$(VENV)/bin/uv pip compile pyproject.toml --generate-hashes --python-version 3.11 \
	    --python-platform x86_64-unknown-linux-gnu -o requirements.lock -q
	$(VENV)/bin/uv pip compile pyproject.toml --extra dev -c requirements.lock --generate-hashes \
	    --python-version 3.11 --python-platform x86_64-unknown-linux-gnu -o requirements-dev.lock -q
	printf 'setuptools\nwheel\n' | $(VENV)/bin/uv pip compile - --generate-hashes \
	    --python-version 3.11 --python-platform x86_64-unknown-linux-gnu -o requirements-build.lock -q

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache
