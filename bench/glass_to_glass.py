"""Glass-to-glass latency of the live path, read from the picture.

Starts the real daemon (synthetic source: every frame stamped with its capture time),
then plays it in Debian's Chromium with these players, one after the other:

  as-shipped  hls.js with its default config on a minimal page (what third-party pages get)
  own-page    the appliance's own page, /?player=hls, LL-HLS with static/hls-settings.js
  dash        the appliance's own page with dash.js, /?player=dash: LL-DASH from
              /live/manifest.mpd with static/dash-settings.js and the MPD's target latency

For every rendered frame (requestVideoFrameCallback) the page draws the picture to a
canvas, reads the stamp with static/stamp.js and records Date.now() - stamp: browser and
daemon share this machine's clock. Prints p50/p95/max, stalls and the player's own latency
(hls.js's hls.latency, dash.js's getCurrentLiveLatency()).

    .venv/bin/python bench/glass_to_glass.py [--seconds 60] [--warmup 5] [--player own-page]

--player both (the default) runs the two hls.js players, all adds dash.
Targets: own page p50 <= 1.0 s, as shipped p50 <= 2.0 s (issue 2), LL-DASH p50 <= 1.5 s
(issue 3), no stalls in any.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from playwright.sync_api import Browser, Route  # noqa: E402

from tests.api_client import login_browser  # noqa: E402
from tests.browser.chromium import check_dash_js, check_hls_js, launch_chromium  # noqa: E402
from tests.browser.conftest import wait_for_media  # noqa: E402
from tests.daemon_proc import DaemonProc, running_daemon  # noqa: E402

TARGET_P50_S = {"as-shipped": 2.0, "own-page": 1.0, "dash": 1.5}
PAGE_PATH = {"own-page": "/?player=hls", "dash": "/?player=dash"}
CHOICES = {"both": ["as-shipped", "own-page"], "all": list(TARGET_P50_S)}

# hls.js as a third-party page uses it: the UMD build from a <script> tag, default config.
AS_SHIPPED_PATH = "/bench/as-shipped.html"
AS_SHIPPED_HTML = """<!doctype html>
<meta charset="utf-8"><title>hls.js as shipped</title>
<video id="video" muted autoplay playsinline style="width:100%"></video>
<script src="/static/vendor/hls.js/hls.min.js"></script>
<script>
  const video = document.getElementById('video');
  const hls = new Hls();
  window.hls = hls;
  hls.on(Hls.Events.MANIFEST_PARSED, () => video.play());
  hls.loadSource('/live/index.m3u8');
  hls.attachMedia(video);
</script>
"""

# Injected before any page script, identical for both players so that only the player
# differs. Media events do not bubble, so listen in the capture phase on the document.
COLLECTOR_JS = """
(() => {
  const m = window.__g2g = {
    started: false, inStall: false, stalls: 0, waiting: 0, bufferStalled: 0,
    samples: [], noStamp: 0, playerLatency: [], recording: false, errors: [], stallAt: [],
  };
  let t0 = 0;  // first 'playing', for when the stalls happened
  const stallBegins = () => {
    if (m.started && !m.inStall) {
      m.inStall = true; m.stalls++; m.stallAt.push((performance.now() - t0) / 1000);
    }
  };
  document.addEventListener('playing', () => {
    if (!m.started) t0 = performance.now();
    m.started = true; m.inStall = false;
  }, true);
  document.addEventListener('waiting', () => {
    if (m.started) { m.waiting++; stallBegins(); }
  }, true);
  const hlsOf = () => (window.player && window.player.hls) || window.hls || null;
  const dashOf = () => (window.player && window.player.dash) || null;
  const bufferStalled = () => { if (m.started) { m.bufferStalled++; stallBegins(); } };
  let hooked = null;
  setInterval(() => {
    const hls = hlsOf();
    const dash = dashOf();
    if (hls && hls !== hooked) {
      hooked = hls;
      hls.on('hlsError', (_e, d) => {
        m.errors.push(d.details + (d.fatal ? ' (fatal)' : ''));
        if (d.details === 'bufferStalledError') bufferStalled();
      });
    }
    if (dash && dash !== hooked) {
      hooked = dash;
      dash.on('error', (e) => m.errors.push(String(e.error && e.error.code)));
      dash.on('bufferStalled', bufferStalled);
    }
    if (!m.recording) return;
    if (hls && hls.media) m.playerLatency.push(hls.latency);
    if (dash && dash.isReady()) m.playerLatency.push(dash.getCurrentLiveLatency());
  }, 250);
  const start = async () => {
    const { readStamp } = await import('/static/stamp.js');
    const video = document.querySelector('video');
    const canvas = document.createElement('canvas');
    const onFrame = () => {
      if (m.recording && video.videoWidth) {
        const stamp = readStamp(video, video.videoWidth, canvas);
        if (stamp === null) m.noStamp++; else m.samples.push(Date.now() - stamp);
      }
      video.requestVideoFrameCallback(onFrame);
    };
    video.requestVideoFrameCallback(onFrame);
  };
  document.addEventListener('DOMContentLoaded', () => { start(); });
})();
"""


@dataclass
class Result:
    player: str
    frames: int
    no_stamp: int
    p50_ms: float
    p95_ms: float
    max_ms: float
    stalls: int
    stall_at_s: list[float]
    player_latency_s: float | None
    errors: list[str]


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of a non-empty list."""
    ordered = sorted(values)
    rank = max(1, round(q / 100 * len(ordered) + 0.5))
    return ordered[min(rank, len(ordered)) - 1]


def measure(browser: Browser, d: DaemonProc, player: str, seconds: float, warmup: float) -> Result:
    page = browser.new_page(viewport={"width": 1280, "height": 800})
    page.add_init_script(COLLECTOR_JS)
    if player == "as-shipped":
        # A made-up path on the daemon's origin, so the page needs no server of its own.
        def serve(route: Route) -> None:
            route.fulfill(body=AS_SHIPPED_HTML, content_type="text/html")

        page.route(d.url + AS_SHIPPED_PATH, serve)
        page.goto(d.url + AS_SHIPPED_PATH)
    else:
        login_browser(page, d.url)  # the appliance's page needs a session
        page.goto(d.url + PAGE_PATH[player])
    page.wait_for_function("() => window.__g2g.started", timeout=30_000)
    # The warm-up lets the player settle at its steady latency (start-up catch-up) and is
    # not counted; stalls are counted from the first 'playing' on.
    time.sleep(warmup)
    page.evaluate("() => { window.__g2g.recording = true; }")
    time.sleep(seconds)
    m: dict[str, Any] = page.evaluate(
        "() => { const m = window.__g2g; m.recording = false; return m; }"
    )
    page.close()
    samples = [float(s) for s in m["samples"]]
    if not samples:
        raise SystemExit(f"{player}: no stamped frame rendered; errors: {m['errors']}")
    lat = sorted(m["playerLatency"])
    return Result(
        player=player,
        frames=len(samples),
        no_stamp=int(m["noStamp"]),
        p50_ms=percentile(samples, 50),
        p95_ms=percentile(samples, 95),
        max_ms=max(samples),
        stalls=int(m["stalls"]),
        stall_at_s=[float(t) for t in m["stallAt"]],
        player_latency_s=lat[len(lat) // 2] if lat else None,
        errors=list(m["errors"])[-5:],
    )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=60.0, help="measured play time per player")
    ap.add_argument("--warmup", type=float, default=5.0, help="play time before measuring")
    ap.add_argument("--stream-age", type=float, default=8.0,
                    help="seconds the stream runs before the first player joins")
    ap.add_argument("--player", choices=[*TARGET_P50_S, *CHOICES], default="both")
    ap.add_argument("--config", type=Path, help="daemon TOML; {port} is replaced (default: "
                    "synthetic 720p30, 0.2 s parts)")
    args = ap.parse_args()
    players = CHOICES.get(args.player, [args.player])
    check_hls_js()
    if "dash" in players:
        check_dash_js()

    results: list[Result] = []
    config = args.config.read_text() if args.config else None
    with tempfile.TemporaryDirectory(prefix="g2g-") as tmp, running_daemon(Path(tmp), config) as d:
        wait_for_media(d)
        # Viewers join a stream that is already running: a player started on the first
        # segment of a fresh daemon starts further behind and, as shipped, stays there.
        time.sleep(args.stream_age)
        print(f"daemon at {d.url}; players join after {args.stream_age:g} s, "
              f"{args.warmup:g} s warm-up, then {args.seconds:g} s per player")
        with launch_chromium() as browser:
            for player in players:
                print(f"playing with {player} ...", flush=True)
                results.append(measure(browser, d, player, args.seconds, args.warmup))

    print()
    print(f"{'player':<11} {'frames':>6} {'p50 s':>6} {'p95 s':>6} {'max s':>6} "
          f"{'stalls':>6} {'player s':>8}  target")
    for r in results:
        target = TARGET_P50_S[r.player]
        ok = r.p50_ms <= target * 1000 and r.stalls == 0
        own = f"{r.player_latency_s:8.2f}" if r.player_latency_s is not None else f"{'-':>8}"
        print(f"{r.player:<11} {r.frames:>6} {r.p50_ms / 1000:6.2f} {r.p95_ms / 1000:6.2f} "
              f"{r.max_ms / 1000:6.2f} {r.stalls:>6} {own}  p50 <= {target:.1f} s, no stall: "
              f"{'met' if ok else 'MISSED'}")
        if r.stalls:
            at = ", ".join(f"{t:.1f}" for t in r.stall_at_s)
            print(f"  stalls at {at} s after playback started (warm-up included)")
        if r.no_stamp:
            print(f"  {r.no_stamp} frames had no readable stamp")
        if r.errors:
            print(f"  last player errors: {', '.join(r.errors)}")
    print("\nlatency = Date.now() at requestVideoFrameCallback - stamp (capture time), per "
          "rendered frame; player = median of the player's own latency while measuring")
    return 0


if __name__ == "__main__":
    sys.exit(main())
