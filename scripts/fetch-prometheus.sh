#!/usr/bin/env bash
# Fetches Prometheus' `promtool` (checks and unit-tests the alert rules, lints the metrics
# exposition) and the `prometheus` server (scripts/dashboard-picture.sh) from Debian's
# `prometheus` package into a cache, and prints the directory that holds both. Nothing is
# installed (no service, no user): the package is only unpacked.
# The cache is $GPUMUX_TOOLS_CACHE, default ${XDG_CACHE_HOME:-$HOME/.cache}/gpumux/tools;
# a complete cache is used as is (no network). Only Debian's archive is contacted.
set -euo pipefail

cache=${GPUMUX_TOOLS_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/gpumux/tools}/prometheus
if [[ -x $cache/promtool && -x $cache/prometheus ]]; then
    echo "$cache"
    exit 0
fi
for tool in apt-get dpkg-deb; do
    command -v "$tool" >/dev/null || { echo "fetch-prometheus: $tool is required" >&2; exit 1; }
done

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/lists/partial" "$work/cache/archives/partial" "$work/debs" "$work/x" "$cache"
echo "deb http://deb.debian.org/debian bookworm main" >"$work/sources.list"
opts=(-q -o "Dir::Etc::sourcelist=$work/sources.list" -o "Dir::Etc::sourceparts=-"
    -o "Dir::State::Lists=$work/lists" -o "Dir::Cache=$work/cache"
    -o "Dir::State::status=/dev/null" -o "APT::Sandbox::User=root")
apt-get "${opts[@]}" update >"$work/update.log" 2>&1 ||
    { cat "$work/update.log" >&2; echo "fetch-prometheus: apt-get update failed" >&2; exit 1; }
(cd "$work/debs" && apt-get "${opts[@]}" download prometheus >"$work/download.log" 2>&1) ||
    { cat "$work/download.log" >&2; echo "fetch-prometheus: download failed" >&2; exit 1; }
dpkg-deb -x "$work"/debs/prometheus_*.deb "$work/x"
for bin in promtool prometheus; do
    cp "$work/x/usr/bin/$bin" "$cache/$bin.tmp" && mv "$cache/$bin.tmp" "$cache/$bin"
done
(cd "$work/debs" && ls prometheus_*.deb) >"$cache/VERSION"
"$cache/promtool" --version >/dev/null
echo "$cache"
