#!/usr/bin/env bash
# Sets up this checkout with the test tools (scripts/setup.sh --test), then runs
# ruff, mypy and pytest. Arguments go to pytest (default run: everything but -m slow).
# Exits non-zero if any of the three fails; all three run so one CI log shows everything.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

bash scripts/setup.sh --test

failed=()
echo "[test] ruff check ." >&2
.venv/bin/ruff check . || failed+=(ruff)
echo "[test] mypy (config in pyproject.toml)" >&2
.venv/bin/mypy || failed+=(mypy)
echo "[test] pytest $*" >&2
# pytest's own exit code counts, 5 (no test collected) included: tests exist.
.venv/bin/pytest "$@" || failed+=("pytest (exit $?)")

if ((${#failed[@]})); then
    echo "[test] FAILED: ${failed[*]}" >&2
    exit 1
fi
echo "[test] all passed" >&2
