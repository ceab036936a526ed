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
#   chat:  2 GiB, priority "latency" — an interactive service: 30 requests/s at random, each
#          10 × 0.5 ms kernels and a synchronize (about 15% of the GPU). It preempts alice and
#          bob at once (gpumux keeps their queued work within 2 ms) and gives the GPU back as
#          soon as a request is done; its request latency is measured first with the GPU to
#          itself, then beside the others, and both are printed at the end (consolidation)
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
printf 'memory_limit = "2GiB"\npriority = "latency"\n' > "$work/tenants.d/chat.toml"

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
chat() { # seconds: chat's requests (their latencies as one JSON line on stdout)
    in_tenant chat "$W" interactive --rate 30 --kernels 10 --ns 500000 --seconds "$1" \
        2>> "$work/workloads.log" | grep '"op":"interactive"'
}
latency() { # the p50/p99 of an interactive JSON line
    sed -n 's/.*"p50_ms":\([0-9.]*\),"p99_ms":\([0-9.]*\),.*/p50 \1 ms, p99 \2 ms/p' "$1"
}
echo "==> chat (priority latency) alone on the GPU for 3 s: 30 requests/s of 10 x 0.5 ms kernels"
chat 3 > "$work/chat-alone.json"
chat $((SECONDS_TO_RUN - 2)) > "$work/chat-shared.json" &
chat_pid=$!
pids+=($chat_pid)
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
echo "==> gpumuxctl top: alice (weight 3), bob (weight 1), chat (priority latency): chat ~15%,"
echo "    alice and bob ~3:1 of the rest; metrics: curl http://$addr/metrics"
sleep 1
refreshes=$((SECONDS_TO_RUN - 3))
"${CTL[@]}" top --interval 1 --iterations $((refreshes > 1 ? refreshes : 1)) || true
wait "$chat_pid" 2>/dev/null || true
echo "==> chat's request latency (arrival to completion), consolidated with alice and bob's batch work:"
echo "    with the GPU to itself:     $(latency "$work/chat-alone.json")"
echo "    beside alice and bob:       $(latency "$work/chat-shared.json")"
echo "    (gpumux-scenarios consolidation measures four such services and a batch job)"
echo "==> done; daemon log was $work/gpumuxd.log (removed on exit)"
