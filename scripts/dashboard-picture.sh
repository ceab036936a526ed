#!/usr/bin/env bash
# Makes docs/dashboard.png: the packaged Grafana dashboard (packaging/monitoring/) drawn with data
# from a real demo run, for operators to see what it shows without installing Grafana.
#
# How: scripts/demo.sh runs (gpumuxd on the fake GPU, tenants alice and bob) with its metrics on a
# fixed port; a Prometheus server (Debian's package, unpacked by scripts/fetch-prometheus.sh) scrapes
# it every second and loads the packaged alert rules; afterwards scripts/dashboard_picture.py asks
# that Prometheus for every panel's queries, exactly as the dashboard has them, and draws the panels
# where the dashboard places them (matplotlib, installed from PyPI into a temporary venv).
#
#   DEMO_SECONDS (default 60)   length of the demo run
#   OUT (default docs/dashboard.png)
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${DEMO_SECONDS:-60}
out=${OUT:-docs/dashboard.png}
metrics_port=19464
prom_port=19090

prom=$(scripts/fetch-prometheus.sh)
work=$(mktemp -d /tmp/gpumux-picture.XXXXXX)
prom_pid=
cleanup() {
    [[ -n $prom_pid ]] && kill "$prom_pid" 2>/dev/null && wait "$prom_pid" 2>/dev/null
    rm -rf "$work"
}
trap cleanup EXIT

cat >"$work/prometheus.yml" <<CONF
global: { scrape_interval: 1s, evaluation_interval: 1s }
rule_files: [ "$PWD/packaging/monitoring/gpumux-alerts.yml" ]
scrape_configs:
  - job_name: gpumux
    static_configs: [ { targets: [ "127.0.0.1:$metrics_port" ] } ]
CONF
"$prom/prometheus" --config.file="$work/prometheus.yml" --storage.tsdb.path="$work/tsdb" \
    --web.listen-address="127.0.0.1:$prom_port" >"$work/prometheus.log" 2>&1 &
prom_pid=$!

echo "==> python venv with matplotlib" >&2
python3 -m venv "$work/venv"
"$work/venv/bin/pip" install -q matplotlib

echo "==> demo (${seconds}s), scraped by Prometheus every second" >&2
DEMO_SECONDS=$seconds DEMO_METRICS_LISTEN="127.0.0.1:$metrics_port" scripts/demo.sh >"$work/demo.log" 2>&1 &
demo=$!
until curl -sf "http://127.0.0.1:$metrics_port/metrics" >/dev/null; do
    kill -0 "$demo" 2>/dev/null || { cat "$work/demo.log" >&2; exit 1; }
    sleep 0.2
done
start=$(date +%s)
wait "$demo" || { cat "$work/demo.log" >&2; exit 1; }
end=$(($(date +%s) - 1))
sleep 2 # the last rule evaluations

firing=$(curl -sf "http://127.0.0.1:$prom_port/api/v1/query" --data-urlencode \
    "query=count by (alertname) (max_over_time(ALERTS{alertstate=\"firing\"}[$((end - start + 5))s]))" |
    python3 -c 'import json,sys; print(", ".join(r["metric"]["alertname"] for r in json.load(sys.stdin)["data"]["result"]) or "none")')
echo "==> alerts that fired during the run: $firing" >&2

"$work/venv/bin/python" scripts/dashboard_picture.py \
    --prometheus "http://127.0.0.1:$prom_port" \
    --dashboard packaging/monitoring/gpumux-dashboard.json \
    --start "$start" --end "$end" --out "$out" \
    --caption "scripts/demo.sh, ${seconds} s on the fake GPU (alice weight 3, bob weight 1); alerts fired: $firing"
