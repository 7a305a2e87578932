#!/usr/bin/env bash
# Start the local sandbox (3 mariadbd + HAProxy on 127.0.0.1) and run the controller in the
# foreground, printing JSON log lines. Ctrl-C stops the controller and removes the sandbox.
set -euo pipefail
cd "$(dirname "$0")/.."
dir=${SANDBOX_DIR:-sandbox}
.venv/bin/hacontrol sandbox up --dir "$dir"
trap '.venv/bin/hacontrol sandbox down --dir "$dir"' EXIT
.venv/bin/hacontrol run --config "$dir/settings.toml"
