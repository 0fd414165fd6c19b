"""What the uplink test peers share: the tools they need (failing, not skipping, when
one is missing), polling until something holds, and the processes running."""

from __future__ import annotations

import contextlib
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

SETUP_HINT = "install the test tools: scripts/setup.sh --test"


def require(tool: str) -> str:
    """The path of `tool`; fails (not skips) when it is missing: setup.sh installs it."""
    path = shutil.which(tool) or (f"/usr/sbin/{tool}" if Path(f"/usr/sbin/{tool}").exists()
                                  else None)
    if path is None:
        pytest.fail(f"{tool} is not installed ({SETUP_HINT})")
    return path


def require_file(path: Path, package: str) -> None:
    if not path.exists():
        pytest.fail(f"{path} is missing: apt install {package} ({SETUP_HINT})")


def wait_for(cond: Callable[[], Any], timeout: float, what: str, step: float = 0.02) -> Any:
    """Poll `cond` until it returns something truthy; that value, or TimeoutError."""
    deadline = time.monotonic() + timeout
    while True:
        value = cond()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.1f} s waiting for {what}")
        time.sleep(step)


def cmdlines() -> dict[int, str]:
    """Every process's command line (NULs as spaces)."""
    out = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                out[int(entry.name)] = (entry / "cmdline").read_bytes().replace(
                    b"\0", b" ").decode(errors="replace")
    return out
