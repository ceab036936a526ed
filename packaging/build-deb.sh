#!/usr/bin/env bash
# Builds the gpumux Debian package: release gpumuxd + gpumuxctl, the shim libgpumux.so, the
# systemd units and the default config (see [package.metadata.deb] in daemon/Cargo.toml).
# Prints the path of the .deb on its last line. Extra arguments go to `cargo deb`.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v cargo-deb >/dev/null 2>&1 && [ ! -x "${CARGO_HOME:-$HOME/.cargo}/bin/cargo-deb" ]; then
    echo "==> installing cargo-deb (cached in ${CARGO_HOME:-$HOME/.cargo}/bin)" >&2
    cargo install cargo-deb --locked --version '^3' >&2
fi
export PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"
command -v dpkg-deb >/dev/null 2>&1 || echo "warning: dpkg-deb is missing; cargo-deb builds the archive itself" >&2

echo "==> cargo build --release (gpumuxd, gpumuxctl, libgpumux.so)" >&2
cargo build --release --locked -p gpumux-daemon -p gpumux-shim >&2

target_dir="${CARGO_TARGET_DIR:-target}"
out_dir="$target_dir/debian"
mkdir -p "$out_dir"
echo "==> cargo deb" >&2
deb=$(cargo deb -p gpumux-daemon --no-build --strip --output "$out_dir" "$@" | tail -n 1)
if [ ! -f "$deb" ]; then
    echo "cargo deb did not report a package file (got: $deb)" >&2
    exit 1
fi
realpath "$deb"
