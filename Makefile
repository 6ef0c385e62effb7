# wire-mpc — `make demo` and `make test` work on a fresh Debian bookworm machine: each
# installs what it needs (Debian packages, a virtualenv from the hash-pinned lock).

VENV          := .venv
PY            := $(VENV)/bin/python
APT_PACKAGES  := softhsm2 systemd libsystemd-dev pkg-config python3-dev gcc nftables \
                 libzmq5 libevent-core-2.1-7 libevent-extra-2.1-7 libevent-pthreads-2.1-7 \
                 libsqlite3-0
# The appliance image (image/build, as root): mkosi and the tools that assemble and boot it.
IMAGE_APT     := mkosi systemd-container debootstrap dracut squashfs-tools cryptsetup-bin \
                 mtools xz-utils qemu-system-x86 qemu-utils curl openssl ovmf swtpm swtpm-tools
PROFILE       ?= production
export PYTHONPATH := $(CURDIR)

.PHONY: all demo test lint typecheck unit image image-tools image-test cluster-test \
        secure-boot-test-key \
        cluster-up cluster-down bench lock venv clean

all: test

venv:
	@tools/bootstrap $(VENV) requirements-dev.lock $(APT_PACKAGES)

# Tests and the demo run beside a private journald (tools/with-journald), so the nodes'
# audit records are real and the host's journal is untouched.
demo: venv
	tools/with-journald $(PY) tools/demo.py

test: lint typecheck unit image-test cluster-test

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

typecheck: venv
	$(VENV)/bin/mypy appliance hsm api

unit: venv
	tools/with-journald $(PY) -m pytest --ignore=tests/image --ignore=tests/appliance_cluster

image-tools: venv
	@tools/bootstrap $(VENV) requirements-dev.lock $(APT_PACKAGES) $(IMAGE_APT)

# The disk image and the direct-boot artifacts in build/image/. The production profile
# needs the pinned Bitcoin Core tarball (BITCOIN_TARBALL=path, or the network), or binaries
# given with their hash (BITCOIN_BINARIES=dir BITCOIN_SHA256=hash); PROFILE=test builds
# without bitcoind (image/README.md).
image: image-tools
	image/build --profile $(PROFILE)

# The images `make test` builds and boots are of the production profile, carrying the
# Bitcoin Core build beside the repository (../shared/bitcoin-core: no official release can
# be fetched on the build machines), checked against this hash, which the manifest records.
TEST_BITCOIN := BITCOIN_BINARIES=$(abspath ../shared/bitcoin-core) \
                BITCOIN_SHA256=c742c600536e4a966734846ef0168c222c2340d5d03077a15229dd1d58300216
# ... and signed for Secure Boot with a throwaway key made for the tests, never shipped (a
# production build is given the operators' own: SECURE_BOOT_KEY=file SECURE_BOOT_CERT=file).
TEST_KEY := build/secure-boot-test
TEST_SIGNING := SECURE_BOOT_KEY=$(TEST_KEY)/db.key SECURE_BOOT_CERT=$(TEST_KEY)/db.crt

secure-boot-test-key: $(TEST_KEY)/db.crt
$(TEST_KEY)/db.crt:
	mkdir -p -m 0700 $(TEST_KEY)
	openssl req -new -x509 -newkey rsa:2048 -nodes -sha256 -days 3650 -keyout $(TEST_KEY)/db.key \
	    -out $(TEST_KEY)/db.crt -subj "/CN=wire-mpc throwaway Secure Boot key for tests/" 2>/dev/null

# A production-profile image, built afresh, then checked: reproducibility (a second build),
# unit sandboxing, and one VM booted under QEMU answering over its virtio-serial port. Each
# phase's time is printed (build, second build, boot) and each test's (--durations).
image-test: image-tools secure-boot-test-key
	$(TEST_BITCOIN) $(TEST_SIGNING) image/build --profile production --no-xz \
	    --out build/image-test
	$(TEST_BITCOIN) $(TEST_SIGNING) WIRE_IMAGE=build/image-test \
	    WIRE_BOOT_TOOLS=build/image-cache/boot-tools $(PY) -m pytest -s -p no:cacheprovider \
	    --durations=0 tests/image

# Three VMs of the image image-test built, on a private network (a network namespace of their own), driven
# through their APIs as three operator organisations would (qemu/README.md); `make test`
# runs it on the image image-test built. Phase times are printed ([cluster] lines).
cluster-test: image-tools secure-boot-test-key
	test -f build/image-test/disk.raw || \
	    $(TEST_BITCOIN) $(TEST_SIGNING) image/build --profile production --no-xz \
	    --out build/image-test
	WIRE_IMAGE=build/image-test WIRE_BOOT_TOOLS=build/image-cache/boot-tools qemu/netns \
	    $(PY) -m pytest -s -p no:cacheprovider --durations=0 tests/appliance_cluster

# The same three VMs to try by hand: up until cluster-down (qemu/README.md).
cluster-up: image-tools secure-boot-test-key
	test -f build/image-test/disk.raw || \
	    $(TEST_BITCOIN) $(TEST_SIGNING) image/build --profile production --no-xz \
	    --out build/image-test
	WIRE_BOOT_TOOLS=build/image-cache/boot-tools qemu/up build/image-test build/cluster

cluster-down:
	qemu/down build/cluster

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
