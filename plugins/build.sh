#!/usr/bin/env bash
# Builds every plugin of this workspace (first-party plugins and the hostile
# test guests) as WebAssembly components.
#
# Output: plugins/target/wasm32-wasip2/release/<crate_name>.wasm
# (crate names use underscores: field_match.wasm, cloudevents.wasm, ...).
# With wasm32-wasip2, rustc links through wasm-component-ld, so these files
# are components already: no wasm-tools step is needed.
set -euo pipefail
cd "$(dirname "$0")"

if ! rustup target list --installed 2>/dev/null | grep -qx wasm32-wasip2; then
    echo "installing the wasm32-wasip2 target" >&2
    rustup target add wasm32-wasip2
fi

cargo build --release --target wasm32-wasip2 --workspace --exclude wasmhook-plugin-common "$@"

out=target/wasm32-wasip2/release
ls -l "$out"/*.wasm
