"""`appliance health`: is this boot good enough to keep? Run by appliance-health.service,
ordered before boot-complete.target; appliance-mark-good.service (after that target)
commits the slot only when these pass.

Checks, repeated until all pass or the time is up:
- page: /healthz answers 200;
- source: the device state says video is live (live, live_local, connecting, degraded:
  an origin that is down is no reason to throw away an update);
- encoder: the first rendition's LL-HLS playlist grows (new parts keep coming). When
  playback needs a signed URL the playlist answers 403; the state check stands for it then
  (READY and the watchdog of appliance.service already need packaged parts).

On failure in a trial boot (`--reboot-trial`) it reboots: a plain reboot returns to the
committed slot. In the committed slot it only fails: rebooting would not change the slot.
"""

from __future__ import annotations

import json
import logging
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from appliance.update.tryboot import DEFAULT_BOOTSEL, Backend, BootError, DirStore, booted_slot

log = logging.getLogger(__name__)

SOURCE_LIVE = frozenset({"live", "live_local", "connecting", "degraded"})
PLAYLIST = "/live/index.m3u8"


@dataclass
class Result:
    ok: bool
    detail: str


def _get(url: str, timeout: float, context: ssl.SSLContext | None) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout, context=context) as r:  # noqa: S310
            return int(r.status), bytes(r.read())
    except urllib.error.HTTPError as exc:
        return exc.code, b""


def _first_variant(multivariant: str) -> str | None:
    lines = [ln.strip() for ln in multivariant.splitlines()]
    for i, line in enumerate(lines[:-1]):
        if line.startswith("#EXT-X-STREAM-INF"):
            return lines[i + 1].split("?", 1)[0]
    return None


def check_once(base: str, gap_s: float = 1.0, timeout: float = 5.0,
               context: ssl.SSLContext | None = None) -> dict[str, Result]:
    """The three checks against the daemon at `base` (e.g. http://127.0.0.1:8080)."""
    out: dict[str, Result] = {}
    try:
        status, body = _get(base + "/healthz", timeout, context)
        state = json.loads(body).get("state") if status == 200 else None
    except (OSError, ValueError) as exc:
        status, state = 0, None
        out["page"] = Result(False, f"/healthz: {exc}")
    out.setdefault("page", Result(status == 200, f"/healthz answered {status}"))
    out["source"] = Result(state in SOURCE_LIVE, f"device state {state}")
    try:
        status, body = _get(base + PLAYLIST, timeout, context)
        variant = _first_variant(body.decode(errors="replace")) if status == 200 else None
        if status == 403:
            out["encoder"] = Result(out["source"].ok, "playback needs a token: by state")
        elif variant is None:
            out["encoder"] = Result(False, f"{PLAYLIST} answered {status}, no rendition")
        else:
            url = base + "/live/" + variant
            first = _get(url, timeout, context)
            time.sleep(gap_s)
            second = _get(url, timeout, context)
            grew = first[0] == second[0] == 200 and first[1] != second[1]
            out["encoder"] = Result(grew, f"{variant} {'grows' if grew else 'does not grow'}")
    except OSError as exc:
        out["encoder"] = Result(False, f"{PLAYLIST}: {exc}")
    return out


def wait_healthy(base: str, timeout_s: float, every_s: float = 2.0,
                 context: ssl.SSLContext | None = None) -> dict[str, Result]:
    """Check until every check passes or `timeout_s` is over; the last results."""
    deadline = time.monotonic() + timeout_s
    while True:
        results = check_once(base, context=context)
        if all(r.ok for r in results.values()) or time.monotonic() >= deadline:
            return results
        time.sleep(every_s)


def in_trial_boot(bootsel: Path = Path(DEFAULT_BOOTSEL)) -> bool:
    """Booted from a slot that autoboot.txt does not commit (a tryboot)."""
    try:
        return Backend(DirStore(bootsel), booted_slot()).load().committed != booted_slot()
    except (BootError, OSError):
        return False


def local_url(listen: str, tls: bool) -> str:
    """The daemon's own address from `web.listen` (a wildcard host is reached on loopback)."""
    host, _, port = listen.rpartition(":")
    host = host.strip("[]")
    if host in ("", "0.0.0.0", "::"):
        host = "127.0.0.1"
    return f"{'https' if tls else 'http'}://{'[' + host + ']' if ':' in host else host}:{port}"


def main(base: str, timeout_s: float, reboot_trial: bool) -> int:
    context = None
    if base.startswith("https:"):
        # Our own daemon on this machine, with its self-signed per-device certificate;
        # nothing secret is sent, so the certificate is not checked.
        context = ssl._create_unverified_context()  # noqa: S323
    results = wait_healthy(base, timeout_s, context=context)
    for name, r in results.items():
        print(f"{'OK  ' if r.ok else 'FAIL'} {name}: {r.detail}")
    if all(r.ok for r in results.values()):
        return 0
    if reboot_trial and in_trial_boot():
        print("health checks failed in a trial boot: rebooting into the committed slot")
        subprocess.run(["systemctl", "reboot"], check=False)
    return 1
