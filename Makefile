# The two commands the README opens with: `make demo` and `make test`. Each creates what it
# needs: the venvs, the wheels, the Debian packages the tests use.
#
# What users install is what runs: `make wheel` builds the manylinux2014 wheels (x86_64 and,
# cross-built, aarch64) and the sdist into dist/; `.venv` is made anew from the x86_64 wheel
# (no editable install, no python/ on sys.path) and the tests, the demo and the benchmarks run
# there. `.venv-build` holds the tools that build and lint.

PYTHON ?= python3
BUILD_VENV := .venv-build
VENV := .venv
PY := $(VENV)/bin/python
DEBS := tar pigz zstd openssl libarchive-tools busybox-static attr umoci libcap2-bin util-linux \
	skopeo oci-image-tool buildah docker-registry apache2-utils curl bubblewrap chromium
SRC_RS := build.rs Cargo.toml Cargo.lock $(shell find rust -name '*.rs')
SRC_PY := $(shell find python -name '*.py' -o -name '*.pyi' -o -name py.typed)

# One version, in Cargo.toml; the artifacts' names follow it.
VERSION := $(shell sed -n 's/^version = "\(.*\)"$$/\1/p' Cargo.toml | head -n 1)
wheel_name = dist/layercore-$(VERSION)-cp311-abi3-manylinux2014_$(1).manylinux_2_17_$(1).whl
WHEEL_X86_64 := $(call wheel_name,x86_64)
WHEEL_AARCH64 := $(call wheel_name,aarch64)
SDIST := dist/layercore-$(VERSION).tar.gz
# maturin finds zig (the ziglang wheel) and auditwheel through PATH.
BUILD_PATH := $(abspath $(BUILD_VENV))/bin:$(PATH)

.PHONY: demo test bench wheel debs lint rust-test py-test bench-smoke dist-check clean \
	fuzz fuzz-smoke fuzz-build fuzz-seeds

demo: debs $(VENV)/.stamp
	$(PY) -m layercore._demo

test: debs wheel lint rust-test py-test bench-smoke fuzz-smoke

# --- tools ------------------------------------------------------------------------------------

$(BUILD_VENV)/.stamp: pyproject.toml
	rm -rf $(BUILD_VENV)
	$(PYTHON) -m venv $(BUILD_VENV)
	$(BUILD_VENV)/bin/python -m pip install --quiet --upgrade "pip>=25.1"
	$(BUILD_VENV)/bin/python -m pip install --quiet --group build
	touch $@

# The Debian packages the tests shell out to; installed only when one is missing.
debs:
	@missing=""; for p in $(DEBS); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
		echo "installing Debian packages:$$missing"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; \
	fi

# --- what we ship ------------------------------------------------------------------------------

wheel: $(WHEEL_X86_64) $(WHEEL_AARCH64) $(SDIST)

# abi3 wheels linked by zig against glibc 2.17, C libraries (libdeflate, zstd) built in; maturin
# refuses to tag a wheel that needs a newer glibc or an outside library, and auditwheel checks
# it again. The aarch64 standard library comes through rustup the first time.
WHEEL_DEPS := $(BUILD_VENV)/.stamp $(SRC_RS) $(SRC_PY) pyproject.toml README.md
define build_wheel
	rm -f dist/layercore-*_$(1).whl
	rustup target list --installed | grep -qx $(1)-unknown-linux-gnu \
		|| rustup target add $(1)-unknown-linux-gnu
	PATH="$(BUILD_PATH)" maturin build --release --zig --compatibility manylinux2014 \
		--target $(1)-unknown-linux-gnu --out dist --quiet
	PATH="$(BUILD_PATH)" auditwheel show $@
endef

$(WHEEL_X86_64): $(WHEEL_DEPS)
	$(call build_wheel,x86_64)

$(WHEEL_AARCH64): $(WHEEL_DEPS)
	$(call build_wheel,aarch64)

$(SDIST): $(BUILD_VENV)/.stamp $(SRC_RS) $(SRC_PY) pyproject.toml README.md
	rm -f dist/layercore-*.tar.gz
	PATH="$(BUILD_PATH)" maturin sdist --out dist

# The venv users would have: the x86_64 wheel (with its zstd extra) and, beside it, only the
# test tools. Made anew for every wheel, so nothing of an earlier install lingers.
$(VENV)/.stamp: $(WHEEL_X86_64)
	rm -rf $(VENV)
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade "pip>=25.1"
	$(PY) -m pip install --quiet --only-binary=:all: "$(WHEEL_X86_64)[zstd]"
	$(PY) -m pip install --quiet --group test
	touch $@

# What CI adds to `make test`: the wheel installed where no Rust toolchain can be found, and the
# sdist built from source where one can; each then runs the smoke script.
dist-check: wheel
	.ci/dist-check "$(PYTHON)" "$(WHEEL_X86_64)" cp311-abi3-manylinux_2_17_x86_64 "$(SDIST)"

# --- checks ------------------------------------------------------------------------------------

lint: $(BUILD_VENV)/.stamp
	cargo fmt --check
	cargo clippy --all-targets --features python -- -D warnings
	$(BUILD_VENV)/bin/ruff check python tests benches .ci fuzz
	$(BUILD_VENV)/bin/ruff format --check python tests benches .ci fuzz
	$(BUILD_VENV)/bin/mypy --strict python/layercore benches/*.py .ci/smoke.py

rust-test:
	cargo test

py-test: $(VENV)/.stamp
	$(PY) -m mypy.stubtest layercore._core
	$(VENV)/bin/pytest tests -q

# The benchmarks on tiny trees with timing off: keeps them working without the full run.
bench-smoke: $(VENV)/.stamp
	LAYERCORE_BENCH_SMOKE=1 $(VENV)/bin/pytest benches -q --benchmark-disable

bench: debs $(VENV)/.stamp
	mkdir -p .benchmarks
	$(VENV)/bin/pytest benches -q --benchmark-json=.benchmarks/latest.json
	$(PY) benches/report.py .benchmarks/latest.json BENCHMARKS.md

# --- fuzzing (fuzz/; docs/RELIABILITY.md records the long runs) --------------------------------

# cargo-fuzz targets of the engine (nightly, ASan) and atheris targets of the Python parsers.
FUZZ_RUST := tar_reader layer_index apply flatten overlay_upper
FUZZ_PY := py_image py_www_authenticate py_dockerfile
FUZZ_SECONDS ?= 600
FUZZ_SMOKE_SECONDS ?= 10

# cargo-fuzz comes from crates.io the first time; the nightly toolchain is on the machine.
fuzz-build:
	command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
	cargo +nightly fuzz build -O

$(VENV)/.fuzz-stamp: $(VENV)/.stamp
	$(PY) -m pip install --quiet --group fuzz
	touch $@

# The seed corpora are committed; this rewrites them after a change of fuzz/seeds.py.
fuzz-seeds: $(VENV)/.stamp
	$(PY) fuzz/seeds.py

# Every target for FUZZ_SECONDS each, one after the other; a crash stops the run.
fuzz: fuzz-build $(VENV)/.fuzz-stamp
	for t in $(FUZZ_RUST) $(FUZZ_PY); do fuzz/run.sh $$t $(FUZZ_SECONDS) || exit 1; done

# What `make test` runs: every target briefly, from its seeds, so none of them rots.
fuzz-smoke: fuzz-build $(VENV)/.fuzz-stamp
	for t in $(FUZZ_RUST) $(FUZZ_PY); do fuzz/run.sh $$t $(FUZZ_SMOKE_SECONDS) || exit 1; done

clean:
	rm -rf target dist $(VENV) $(BUILD_VENV) .bench-data .benchmarks fuzz/target
