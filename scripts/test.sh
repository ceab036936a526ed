#!/usr/bin/env bash
# Runs every gpumux test on a fresh machine: installs what the tests need, builds the
# workspace (the fake GPU libraries, the shim, the daemon, the workloads), fetches NVIDIA's real
# driver libraries (the conformance oracle; they answer without a GPU), then runs the format/lint
# gates and all unit and integration tests, and renders docs/CONFORMANCE.md from the conformance
# results. No GPU needed.
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
command -v cc >/dev/null 2>&1 || need_apt+=(gcc libc6-dev)
command -v python3 >/dev/null 2>&1 || need_apt+=(python3)
python3 -c 'import ensurepip' >/dev/null 2>&1 || need_apt+=(python3-venv)
if ((${#need_apt[@]})); then
    echo "==> installing ${need_apt[*]}"
    if command -v apt-get >/dev/null 2>&1; then
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}"
    else
        echo "please install: ${need_apt[*]}" >&2
        exit 1
    fi
fi
if ! command -v cargo >/dev/null 2>&1; then
    echo "cargo is missing: install Rust with rustup (https://rustup.rs)" >&2
    exit 1
fi
rustup component list --installed 2>/dev/null | grep -q rustfmt || rustup component add rustfmt clippy 2>/dev/null || true

echo "==> cargo fmt --check"
cargo fmt --all -- --check
echo "==> cargo build --workspace"
cargo build --workspace --all-targets
echo "==> cargo clippy"
cargo clippy --workspace --all-targets -- -D warnings
echo "==> alert rules: promtool check rules, promtool test rules"
# promtool from Debian's prometheus package, unpacked into a cache (scripts/fetch-prometheus.sh);
# the integration tests also lint the metrics exposition with it (GPUMUX_PROMTOOL).
GPUMUX_PROMTOOL="$(scripts/fetch-prometheus.sh)/promtool"
export GPUMUX_PROMTOOL
"$GPUMUX_PROMTOOL" check rules packaging/monitoring/gpumux-alerts.yml
(cd packaging/monitoring && "$GPUMUX_PROMTOOL" test rules gpumux-alerts.test.yml)
echo "==> NVIDIA's real driver libraries (the conformance oracle: scripts/fetch-nvidia-libs.sh)"
GPUMUX_NVIDIA_LIBS=$(scripts/fetch-nvidia-libs.sh)
echo "==> Python clients (pynvml, gpustat, cuda.core: scripts/python-clients.sh)"
GPUMUX_PYTHON=$(scripts/python-clients.sh)
export GPUMUX_NVIDIA_LIBS GPUMUX_PYTHON GPUMUX_REQUIRE_NVIDIA=1
echo "==> cargo test"
rm -rf target/conformance
test_status=0
cargo test --workspace --no-fail-fast "$@" || test_status=$?
if (($# == 0)); then
    # The conformance tests wrote target/conformance/*.json; the page shows this run's results.
    echo "==> docs/CONFORMANCE.md"
    cargo run -q -p gpumux-conformance --bin conformance-report
fi
((test_status == 0)) || exit "$test_status"
echo "==> time-slicing scenarios on a busy host (2 CPU-bound processes per core)"
# Shares, waits and caps must hold when the host's CPUs are busy (figures are reported; the
# run fails only when a scenario cannot run).
target/debug/gpumux-scenarios --cpu-hogs $((2 * $(nproc))) \
    weights-3-1 weights-1-2-3-4 lone-tenant compute-limit-30
echo "==> Debian package (packaging/build-deb.sh) and its contents"
deb=$(packaging/build-deb.sh)
GPUMUX_TEST_DEB=1 GPUMUX_DEB="$deb" cargo test -p gpumux-daemon --test packaging deb_package_contents
