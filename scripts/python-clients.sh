#!/usr/bin/env bash
# Creates (once) a Python virtual environment with the third-party CUDA/NVML clients the tests run
# on the fake GPU, as a user would (pynvml, gpustat, cuda.core over cuda-bindings), from PyPI, and
# prints its python. Pinned versions; reused while they do not change.
# <venv> is $GPUMUX_PYTHON_CLIENTS, default ${XDG_CACHE_HOME:-$HOME/.cache}/gpumux/python-clients.
set -euo pipefail

venv=${GPUMUX_PYTHON_CLIENTS:-${XDG_CACHE_HOME:-$HOME/.cache}/gpumux/python-clients}
requirements=(
    nvidia-ml-py==13.615.71
    gpustat==1.1.1
    cuda-bindings==12.9.10
    cuda-core==1.2.2
)
wanted=$(printf '%s\n' "${requirements[@]}")
if [[ -x $venv/bin/python && -f $venv/.requirements && $(<"$venv/.requirements") == "$wanted" ]]; then
    echo "$venv/bin/python"
    exit 0
fi
command -v python3 >/dev/null || { echo "python-clients: python3 is required" >&2; exit 1; }
rm -rf "$venv"
python3 -m venv "$venv" >&2 ||
    { echo "python-clients: python3 -m venv failed (Debian: apt-get install python3-venv)" >&2; exit 1; }
"$venv/bin/python" -m pip install -q --disable-pip-version-check "${requirements[@]}" >&2
echo "$wanted" >"$venv/.requirements"
echo "$venv/bin/python"
