#!/usr/bin/env bash
# Installs componentize-js from npm and builds filter.wasm, a wasmhook filter
# component, from filter.js.
set -euo pipefail
cd "$(dirname "$0")"
npm install --no-audit --no-fund
node build.mjs
