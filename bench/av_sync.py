"""A/V drift over a long run: the flash in the served video against the beep in the
served audio, measured from the LL-HLS segments at the start and every minute after.

    .venv/bin/python bench/av_sync.py [--minutes 10]

Target: the offset changes by less than one frame (33 ms at 30 fps) over the run.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.av_sync import av_offsets  # noqa: E402
from tests.daemon_proc import running_daemon  # noqa: E402
from tests.test_live_e2e import wait_playlist  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--minutes", type=float, default=10)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp, running_daemon(Path(tmp)) as d:
        for track in ("720p", "audio"):
            wait_playlist(d, f"/live/{track}/index.m3u8", r"(?s)(#EXTINF.*){4}")
        t0 = time.monotonic()
        rows = []
        while True:
            elapsed = time.monotonic() - t0
            offs = av_offsets(d)
            med = statistics.median(offs) * 1000
            rows.append((elapsed, med))
            print(f"t={elapsed / 60:5.1f} min  flash-beep offset median {med:6.1f} ms "
                  f"(n={len(offs)}, min {min(offs) * 1000:.1f}, max {max(offs) * 1000:.1f})",
                  flush=True)
            if elapsed >= args.minutes * 60:
                break
            time.sleep(min(60.0, max(0.0, args.minutes * 60 - elapsed)))
    drift = rows[-1][1] - rows[0][1]
    print(f"\ndrift over {rows[-1][0] / 60:.1f} min: {drift:+.1f} ms (target |drift| < 33.3 ms)")


if __name__ == "__main__":
    main()
