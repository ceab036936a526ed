#!/usr/bin/env bash
# The main job, without a GPU: gpumuxd on a simulated 16 GiB GPU (the project's fake CUDA
# driver and NVML) with two example tenants, each running real workloads through the real
# shim, and the live view `gpumuxctl top` (on a terminal: interactive, q quits; otherwise the
# same table printed as text every second).
#
#   alice: 6 GiB, weight 3 — two processes saturating the GPU (one launching kernels, one
#          replaying a decode step captured once as a CUDA graph, with a 256 MiB workspace
#          allocated inside the graph), one holding 4 GiB
#   bob:   2 GiB, weight 1 — one process saturating the GPU, one holding 1 GiB, and one
#          that tries to take 1 GiB more (refused: over bob's quota)
#   a stray process on the GPU without gpumux, holding 1 GiB (UNMANAGED in the status)
#
# Like a real GPU, the simulated one gives every CUDA context 300 MiB of device memory of its
# own (FAKEGPU_CONTEXT_BYTES): it counts against the tenant's quota (the OVERHEAD column).
#
# DEMO_SECONDS (default 20) sets how long it runs. Ctrl-C stops it; everything is cleaned up.
# DEMO_METRICS_LISTEN (default 127.0.0.1:0, any free port) is where gpumuxd serves /metrics.
set -euo pipefail
cd "$(dirname "$0")/.."
SECONDS_TO_RUN=${DEMO_SECONDS:-20}

echo "==> building (first run takes a few minutes)"
cargo build --workspace --quiet
T=$PWD/target/debug

work=$(mktemp -d /tmp/gpumux-demo.XXXXXX)
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT INT TERM

# The simulated GPU: the fake libcuda.so.1 / libnvidia-ml.so.1 and a shared device state file.
mkdir -p "$work/lib" "$work/state" "$work/tenants.d"
ln -s "$T/libcuda.so" "$work/lib/libcuda.so.1"
ln -s "$T/libcuda.so" "$work/lib/libcuda.so"
ln -s "$T/libnvidia_ml.so" "$work/lib/libnvidia-ml.so.1"
export LD_LIBRARY_PATH="$work/lib" FAKEGPU_STATE="$work/gpu.state" FAKEGPU_DEVICES=16GiB \
    FAKEGPU_CONTEXT_BYTES=300MiB

cat > "$work/gpumuxd.toml" <<CONF
state_dir = "$work/state"
tenants_dir = "$work/tenants.d"
quantum_ms = 50
metrics_listen = "${DEMO_METRICS_LISTEN:-127.0.0.1:0}"
CONF
printf 'memory_limit = "6GiB"\nweight = 3\n' > "$work/tenants.d/alice.toml"
printf 'memory_limit = "2GiB"\nweight = 1\n' > "$work/tenants.d/bob.toml"

"$T/gpumuxd" --config "$work/gpumuxd.toml" 2> "$work/gpumuxd.log" &
pids+=($!)
for _ in $(seq 100); do [ -S "$work/state/tenants/bob/gpumux.sock" ] && break; sleep 0.1; done

# The C workload reaches the driver the way the CUDA runtime does (cuGetProcAddress).
W=$work/driver_workload
cc -O2 -pthread -o "$W" tests/workloads/c/driver_workload.c -ldl
in_tenant() { # tenant, args...
    local t=$1; shift
    LD_PRELOAD="$T/libgpumux.so" GPUMUX_SOCKET="$work/state/tenants/$t/gpumux.sock" "$@"
}
run_bg() { "$@" > /dev/null 2>> "$work/workloads.log" & pids+=($!); }
run_bg in_tenant alice "$W" load --ns 2000000 --batch 4 --seconds "$SECONDS_TO_RUN"
run_bg in_tenant alice "$W" graph --ns 2000000 --kernels 8 --mem 256MiB --seconds "$SECONDS_TO_RUN"
run_bg in_tenant alice "$W" hold --bytes $((4 << 30)) --seconds "$SECONDS_TO_RUN"
run_bg in_tenant bob "$W" load --ns 2000000 --batch 4 --seconds "$SECONDS_TO_RUN"
run_bg in_tenant bob "$W" hold --bytes $((1 << 30)) --seconds "$SECONDS_TO_RUN"
run_bg "$W" hold --bytes $((1 << 30)) --seconds "$SECONDS_TO_RUN"
sleep 1
echo "==> bob (two contexts of 300 MiB and 1 GiB held) asks for 1 GiB more, in a third process:"
in_tenant bob "$W" ops "alloc:extra:1GiB meminfo" | sed 's/^/    /'
sleep 1

CTL=("$T/gpumuxctl" --config "$work/gpumuxd.toml")
addr=$("${CTL[@]}" status --json | sed -n 's/.*"metrics_address": "\(.*\)".*/\1/p')
echo "==> gpumuxctl top: device time per tenant (expect ~75% / ~25%, the BY WEIGHT column);"
echo "    metrics: curl http://$addr/metrics"
sleep 1
refreshes=$((SECONDS_TO_RUN - 3))
"${CTL[@]}" top --interval 1 --iterations $((refreshes > 1 ? refreshes : 1)) || true
echo "==> done; daemon log was $work/gpumuxd.log (removed on exit)"
