"""What uplinks cost: the daemon's CPU with 0, 1, 2, 3 RTMP destinations (to a local
nginx-rtmp), and how long a stream takes to come back when its origin restarts.

CPU: the real daemon (synthetic source, one 720p rung + AAC) runs with n destinations,
each pushing the rung to its own stream key on one nginx; after a warm-up, the daemon's
CPU time (all threads, from /proc) over a window. Rounds alternate the order of n. It
prints CPU % per n, and per added destination: its CPU and that as a ratio of the base
(no destination).

Reconnects: the daemon with one RTMP destination (and one SRT destination to
srt-live-transmit, unless --no-srt); the origins are stopped for a random 0.5-5 s and
started again, N times (srt-live-transmit alternately closing and killed). A stream is
back when its origin has the connection again: nginx's on_publish call, srt-live-
transmit's "Accepted"; media follows at the next keyframe (the daemon's GOP is 2 s), and
for SRT that time (first bytes received) is shown too. Prints p50 / p95 / max.

    .venv/bin/python bench/uplink_cost.py [--seconds 20] [--warmup 5] [--rounds 1]
                                          [--restarts 10] [--no-srt] [--only cpu|restarts]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.daemon_proc import DaemonProc, running_daemon  # noqa: E402
from tests.uplink_peer_common import wait_for  # noqa: E402
from tests.uplink_peer_nginx import KeyCheck, NginxRtmp  # noqa: E402
from tests.uplink_peer_srt import SrtPeer  # noqa: E402

TICKS = os.sysconf("SC_CLK_TCK")
PASSPHRASE = "bench-" + os.urandom(8).hex()


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS  # utime + stime, all threads


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100)."""
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(q / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


def device_state(d: DaemonProc) -> str:
    return str(json.loads(d.get("/healthz"))["state"])


@contextlib.contextmanager
def origin(work: Path) -> Iterator[NginxRtmp]:
    check = KeyCheck()
    nginx = NginxRtmp(work, check)
    try:
        nginx.start()
        yield nginx
    finally:
        nginx.close()
        check.close()


def rtmp_uplinks(nginx: NginxRtmp, n: int, tag: str) -> str:
    return "".join(f'[[uplink]]\nname = "d{i}"\nurl = "{nginx.url}"\nkey = "{tag}-{i}"\n'
                   for i in range(n))


def measure_cpu(work: Path, nginx: NginxRtmp, n: int, warmup: float, seconds: float,
                tag: str) -> tuple[float, float]:
    """(daemon CPU %, nginx CPU %) with `n` destinations."""
    with running_daemon(work / f"cpu-{tag}", extra=rtmp_uplinks(nginx, n, tag)) as d:
        want = "live" if n else "live_local"
        wait_for(lambda: device_state(d) == want, 30, f"device state {want}")
        wait_for(lambda: len({p.name for p in nginx.publishes()
                              if p.name.startswith(tag + "-")}) == n, 10, "every publish")
        time.sleep(warmup)
        pids = nginx.pids()
        d0, n0, t0 = cpu_seconds(d.proc.pid), sum(map(cpu_seconds, pids)), time.monotonic()
        time.sleep(seconds)
        d1, n1, t1 = cpu_seconds(d.proc.pid), sum(map(cpu_seconds, pids)), time.monotonic()
        if device_state(d) != want:
            print(f"  warning: the device state left {want} during the measurement")
        d.stop(signal.SIGTERM)
    return (d1 - d0) / (t1 - t0) * 100, (n1 - n0) / (t1 - t0) * 100


def cpu_per_destination(work: Path, rounds: int, warmup: float, seconds: float,
                        max_dest: int) -> None:
    counts = list(range(max_dest + 1))
    daemon: dict[int, list[float]] = {n: [] for n in counts}
    with origin(work / "nginx-cpu") as nginx:
        for r in range(rounds):
            for n in (counts if r % 2 == 0 else counts[::-1]):
                cpu, ng = measure_cpu(work, nginx, n, warmup, seconds, f"r{r}n{n}")
                daemon[n].append(cpu)
                print(f"  round {r + 1}: {n} destination(s): daemon {cpu:5.1f} % CPU, "
                      f"nginx {ng:4.1f} %", flush=True)
    base = statistics.median(daemon[0])
    print(f"\nCPU of the daemon (median of {rounds} round(s) of {seconds:.0f} s; 100 % = one "
          "core):")
    print("destinations | daemon CPU % | per added destination % | ratio to base")
    for n in counts:
        cpu = statistics.median(daemon[n])
        per = (cpu - base) / n if n else 0.0
        print(f"{n:12d} | {cpu:12.1f} | {per:23.2f} | "
              f"{(per / base if n and base else 0):13.3f}")


def reconnects(work: Path, restarts: int, srt: bool, seed: int) -> None:
    rng = random.Random(seed)
    rtmp_back: list[float] = []
    srt_back: list[float] = []
    srt_media: list[float] = []
    peer = SrtPeer(work / "srt", passphrase=PASSPHRASE) if srt else None
    with origin(work / "nginx-restarts") as nginx, contextlib.ExitStack() as stack:
        extra = rtmp_uplinks(nginx, 1, "restarts")
        if peer is not None:
            stack.callback(peer.stop)
            peer.start()
            extra += (f'[[uplink]]\nname = "srt"\nurl = "srt://127.0.0.1:{peer.port}"\n'
                      f'passphrase = "{PASSPHRASE}"\n')
        d = stack.enter_context(running_daemon(work / "restarts", extra=extra))
        wait_for(lambda: device_state(d) == "live", 30, "device state live")
        for i in range(restarts):
            time.sleep(2.0)
            outage = rng.uniform(0.5, 5.0)
            nginx.stop()
            if peer is not None:
                peer.stop(signal.SIGINT if i % 2 == 0 else signal.SIGKILL)
            time.sleep(outage)
            size = peer.received() if peer is not None else 0
            accepted = peer.connections() if peer is not None else 0
            t_rtmp = nginx.start()
            t_srt = peer.start() if peer is not None else 0.0
            srt_at: float | None = None
            media_at: float | None = None
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline:
                if peer is not None and srt_at is None and peer.connections() > accepted:
                    srt_at = time.monotonic()
                if peer is not None and media_at is None and peer.received() > size:
                    media_at = time.monotonic()
                if nginx.publishes(after=t_rtmp) and (peer is None or None not in (srt_at,
                                                                                   media_at)):
                    break
                time.sleep(0.005)
            pub = nginx.publishes(after=t_rtmp)
            r = pub[0].at - t_rtmp if pub else float("inf")
            rtmp_back.append(r)
            line = f"  restart {i + 1:2d}: origin away {outage:4.2f} s; RTMP back {r:5.2f} s"
            if peer is not None:
                s = srt_at - t_srt if srt_at is not None else float("inf")
                m = media_at - t_srt if media_at is not None else float("inf")
                srt_back.append(s)
                srt_media.append(m)
                line += f"; SRT back {s:5.2f} s, its media {m:5.2f} s"
            print(line, flush=True)
        d.stop(signal.SIGTERM)
    print(f"\nReconnect times over {restarts} origin restarts (s after the origin started):")
    for name, values in (("RTMP (publish at nginx)", rtmp_back),
                         ("SRT (connection accepted by srt-live-transmit)", srt_back),
                         ("SRT media (first bytes at srt-live-transmit)", srt_media)):
        if values:
            print(f"{name}: p50 {percentile(values, 50):.2f}  p95 {percentile(values, 95):.2f}"
                  f"  max {max(values):.2f}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=20.0, help="CPU window per run")
    ap.add_argument("--warmup", type=float, default=5.0)
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--max-destinations", type=int, default=3)
    ap.add_argument("--restarts", type=int, default=10)
    ap.add_argument("--no-srt", action="store_true", help="reconnects: RTMP only")
    ap.add_argument("--seed", type=int, default=4)
    ap.add_argument("--only", choices=("cpu", "restarts"), help="run one part only")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="uplink-cost-") as tmp:
        work = Path(tmp)
        if args.only != "restarts":
            print("CPU per destination", flush=True)
            cpu_per_destination(work, args.rounds, args.warmup, args.seconds,
                                args.max_destinations)
        if args.restarts and args.only != "cpu":
            print("\nOrigin restarts", flush=True)
            reconnects(work, args.restarts, not args.no_srt, args.seed)
    return 0


if __name__ == "__main__":
    sys.exit(main())
