"""Time from `appliance run` starting to the first LL-HLS part being served.

Each run starts a fresh daemon (synthetic source, default config on a free port), then
polls: /healthz, the multivariant playlist, the first media playlist until it lists an
EXT-X-PART, and that part itself until it is served. Prints each run and the medians.

    .venv/bin/python bench/startup.py [--runs 5]

Target (issue 2): first part served <= 2 s after the process starts.
"""

from __future__ import annotations

import argparse
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import urljoin

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.daemon_proc import default_config, free_port  # noqa: E402

TARGET_S = 2.0
POLL_S = 0.01
TIMEOUT_S = 30.0


def fetch(url: str) -> bytes | None:
    """The body, or None while the daemon is not (yet) serving it."""
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return bytes(r.read())
    except (urllib.error.HTTPError, OSError):
        return None


def first_uri(playlist: str, after_tag: str) -> str | None:
    """The first URI line that follows a line starting with `after_tag`."""
    lines = playlist.splitlines()
    for i, line in enumerate(lines):
        if line.startswith(after_tag):
            return next((u for u in lines[i + 1:] if u and not u.startswith("#")), None)
    return None


def one_run(work: Path) -> dict[str, float]:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    cfg = work / "appliance.toml"
    cfg.write_text(default_config(port))
    log = (work / "daemon.log").open("wb")
    marks: dict[str, float] = {}
    t0 = time.monotonic()
    proc = subprocess.Popen(
        [str(ROOT / ".venv/bin/appliance"), "run", "--config", str(cfg),
         "--state-dir", str(work / "state")],
        stdout=log, stderr=subprocess.STDOUT,
    )
    try:
        deadline = t0 + TIMEOUT_S
        media_url = part_url = None
        while "part" not in marks:
            if proc.poll() is not None or time.monotonic() > deadline:
                log.flush()
                tail = (work / "daemon.log").read_text(errors="replace")[-2000:]
                raise SystemExit(f"no part served (exit {proc.returncode}); {marks}\n{tail}")
            if "healthz" not in marks:
                if fetch(base + "/healthz") is not None:
                    marks["healthz"] = time.monotonic() - t0
            elif media_url is None:
                body = fetch(base + "/live/index.m3u8")
                uri = first_uri(body.decode(), "#EXT-X-STREAM-INF") if body else None
                if uri:
                    marks["multivariant"] = time.monotonic() - t0
                    media_url = urljoin(base + "/live/index.m3u8", uri)
            elif part_url is None:
                body = fetch(media_url)
                m = re.search(r'#EXT-X-PART:.*?URI="([^"]+)"', body.decode()) if body else None
                if m:
                    marks["listed"] = time.monotonic() - t0
                    part_url = urljoin(media_url, m.group(1))
            elif fetch(part_url):
                marks["part"] = time.monotonic() - t0
            time.sleep(POLL_S)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
    return marks


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()
    if not (ROOT / ".venv/bin/appliance").exists():
        raise SystemExit("no .venv/bin/appliance: run `bash scripts/setup.sh` first")

    runs: list[dict[str, float]] = []
    for i in range(args.runs):
        with tempfile.TemporaryDirectory(prefix="startup-") as tmp:
            m = one_run(Path(tmp))
        runs.append(m)
        print(f"run {i + 1}: /healthz {m['healthz']:.2f} s, multivariant {m['multivariant']:.2f} s,"
              f" first part listed {m['listed']:.2f} s, served {m['part']:.2f} s", flush=True)

    med = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
    verdict = "met" if med["part"] <= TARGET_S else "MISSED"
    print(f"\nmedian of {args.runs}: /healthz {med['healthz']:.2f} s, first part served "
          f"{med['part']:.2f} s (target <= {TARGET_S:.1f} s: {verdict})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
