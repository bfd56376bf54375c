#!/usr/bin/env bash
# Builds filter.wasm, a wasmhook filter component, from app.py with
# componentize-py (from PyPI; it bundles CPython, so no network is needed
# after the pip install).
set -euo pipefail
cd "$(dirname "$0")"

if ! command -v componentize-py >/dev/null; then
    pip install "componentize-py==0.25.1"
fi

componentize-py \
    --wit-path ../../wit \
    --world wasmhook:plugin/filter@0.1.0 \
    componentize app \
    --output filter.wasm

ls -l filter.wasm
