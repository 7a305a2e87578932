#!/usr/bin/env bash
# Start the local sandbox (3 mariadbd behind ProxySQL when a `proxysql` is on PATH, else
# HAProxy; ROUTER=haproxy|proxysql picks) and run the controller in the foreground, printing
# JSON log lines. Ctrl-C stops the controller and removes the sandbox.
set -euo pipefail
cd "$(dirname "$0")/.."
dir=${SANDBOX_DIR:-sandbox}
router=()
[ -n "${ROUTER:-}" ] && router=(--router "$ROUTER")
.venv/bin/hacontrol sandbox up --dir "$dir" "${router[@]}"
trap '.venv/bin/hacontrol sandbox down --dir "$dir"' EXIT
.venv/bin/hacontrol run --config "$dir/settings.toml"
