#!/usr/bin/env bash
# Sets up this checkout (scripts/setup.sh) and runs the appliance daemon in the foreground.
#   scripts/run.sh [--config FILE] [--state-dir DIR]   (arguments go to `appliance run`)
# With no config it uses the embedded default: synthetic source (or the Pi camera when
# present), web page on http://127.0.0.1:8080/ (the daemon prints the address).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

bash "$ROOT/scripts/setup.sh"
echo "[run] starting: appliance run $*" >&2
exec "$ROOT/.venv/bin/appliance" run "$@"
