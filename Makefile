# The two commands the README opens with: `make demo` and `make test`. Each creates what it
# needs: the venv, the release build of the extension, the Debian packages the tests use.

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
DEBS := tar pigz zstd openssl libarchive-tools busybox-static attr umoci libcap2-bin util-linux \
	skopeo oci-image-tool buildah
SRC_RS := $(shell find rust -name '*.rs') Cargo.toml Cargo.lock

.PHONY: demo test bench build venv debs lint rust-test py-test bench-smoke clean

demo: debs build
	$(PY) -m layercore._demo

test: debs build lint rust-test py-test bench-smoke

venv: $(VENV)/.stamp
$(VENV)/.stamp: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "maturin>=1.7,<2" "pytest>=8" "pytest-benchmark>=4" \
		"hypothesis>=6" "ruff>=0.6" "mypy>=1.10" "zstandard>=0.22" "rich>=13"
	touch $@

# The release build of the extension, installed into the venv (editable Python sources).
build: $(VENV)/.built
$(VENV)/.built: $(VENV)/.stamp $(SRC_RS) pyproject.toml
	$(VENV)/bin/maturin develop --release --quiet
	touch $@

# The Debian packages the tests shell out to; installed only when one is missing.
debs:
	@missing=""; for p in $(DEBS); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
		echo "installing Debian packages:$$missing"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; \
	fi

lint: venv
	cargo fmt --check
	cargo clippy --all-targets --features python -- -D warnings
	$(VENV)/bin/ruff check python tests benches
	$(VENV)/bin/ruff format --check python tests benches
	$(VENV)/bin/mypy --strict python/layercore benches/*.py

rust-test:
	cargo test

py-test: build
	$(VENV)/bin/python -m mypy.stubtest layercore._core
	$(VENV)/bin/pytest tests -q

# The benchmarks on tiny trees with timing off: keeps them working without the full run.
bench-smoke: build
	LAYERCORE_BENCH_SMOKE=1 $(VENV)/bin/pytest benches -q --benchmark-disable

bench: debs build
	mkdir -p .benchmarks
	$(VENV)/bin/pytest benches -q --benchmark-json=.benchmarks/latest.json
	$(PY) benches/report.py .benchmarks/latest.json BENCHMARKS.md

clean:
	rm -rf target $(VENV) .bench-data .benchmarks
