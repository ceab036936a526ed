#!/usr/bin/env bash
# Fetches NVIDIA's real user-space driver libraries (the conformance oracle; they run without a
# GPU) into a cache and prints the cache directory. Nothing is installed:
#   <cache>/535/{libcuda.so.1,libnvidia-ml.so.1,VERSION}   Debian bookworm non-free (CUDA 12.2)
#   <cache>/550/{libcuda.so.1,libnvidia-ml.so.1,VERSION}   Debian trixie non-free (CUDA 12.4)
#   <cache>/cudart/{libcudart.so.12,VERSION}               PyPI nvidia-cuda-runtime-cu12
# <cache> is $GPUMUX_NVIDIA_CACHE, default ${XDG_CACHE_HOME:-$HOME/.cache}/gpumux/nvidia.
# Only Debian's archive and PyPI are contacted; a complete cache is used as is (no network).
set -euo pipefail

cache=${GPUMUX_NVIDIA_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/gpumux/nvidia}
mkdir -p "$cache"

complete() {
    [[ -s $cache/535/libcuda.so.1 && -s $cache/535/libnvidia-ml.so.1 &&
       -s $cache/550/libcuda.so.1 && -s $cache/550/libnvidia-ml.so.1 &&
       -s $cache/cudart/libcudart.so.12 ]]
}
if complete; then
    echo "$cache"
    exit 0
fi

for tool in apt-get dpkg-deb python3; do
    command -v "$tool" >/dev/null || { echo "fetch-nvidia-libs: $tool is required" >&2; exit 1; }
done

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# One Debian suite's libcuda1 + libnvidia-ml1, through a private apt configuration.
fetch_suite() { # <suite> <dir name>
    local suite=$1 out=$cache/$2 root=$work/apt-$1
    mkdir -p "$root/lists/partial" "$root/cache/archives/partial" "$root/debs" "$root/x" "$out"
    echo "deb http://deb.debian.org/debian $suite main non-free" >"$root/sources.list"
    local opts=(-q -o "Dir::Etc::sourcelist=$root/sources.list" -o "Dir::Etc::sourceparts=-"
        -o "Dir::State::Lists=$root/lists" -o "Dir::Cache=$root/cache"
        -o "Dir::State::status=/dev/null" -o "APT::Sandbox::User=root")
    apt-get "${opts[@]}" update >"$root/update.log" 2>&1 ||
        { cat "$root/update.log" >&2; echo "fetch-nvidia-libs: apt-get update ($suite) failed" >&2; return 1; }
    (cd "$root/debs" && apt-get "${opts[@]}" download libcuda1 libnvidia-ml1 >"$root/download.log" 2>&1) ||
        { cat "$root/download.log" >&2; echo "fetch-nvidia-libs: download ($suite) failed" >&2; return 1; }
    local deb
    for deb in "$root"/debs/*.deb; do dpkg-deb -x "$deb" "$root/x"; done
    local lib
    for lib in libcuda.so.1 libnvidia-ml.so.1; do
        local found
        found=$(find "$root/x" -name "$lib" | head -n 1)
        [[ -n $found ]] || { echo "fetch-nvidia-libs: $lib not in the $suite packages" >&2; return 1; }
        cp -L "$found" "$out/$lib.tmp" && mv "$out/$lib.tmp" "$out/$lib"
    done
    (cd "$root/debs" && ls *.deb) >"$out/VERSION"
}

fetch_suite bookworm 535
fetch_suite trixie 550

mkdir -p "$work/wheel" "$cache/cudart"
python3 -m pip download -q --no-deps --only-binary=:all: -d "$work/wheel" 'nvidia-cuda-runtime-cu12>=12.4,<13' >&2
wheel=$(ls "$work"/wheel/*.whl)
python3 - "$wheel" "$cache/cudart" <<'PY'
import sys, zipfile, os
whl, out = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(whl) as z:
    name = next(n for n in z.namelist() if n.endswith("/libcudart.so.12"))
    with z.open(name) as src, open(os.path.join(out, "libcudart.so.12.tmp"), "wb") as dst:
        dst.write(src.read())
os.replace(os.path.join(out, "libcudart.so.12.tmp"), os.path.join(out, "libcudart.so.12"))
with open(os.path.join(out, "VERSION"), "w") as f:
    f.write(os.path.basename(whl) + "\n")
PY

complete || { echo "fetch-nvidia-libs: cache incomplete after fetching" >&2; exit 1; }
echo "$cache"
