"""CPU and peak RSS of `appliance run` (the ABR ladder + AAC, LL-HLS) against the ffmpeg
command line making the same ladder with the same x264 settings, alternating rounds.

ffmpeg gets the same pictures: a few seconds of the appliance's synthetic source written
raw to /dev/shm and looped in real time. One input, split and scaled per rung with the
scaler the appliance uses (libswscale, bilinear: PyAV's VideoFrame.reformat default),
x264 with the appliance's options (appliance/capture/encoder.py), IDRs forced at the same
segment boundaries, AAC once, fMP4 HLS per rung. After the first round the x264 option
strings both wrote into their streams (an SEI) are compared, rung by rung.

On a machine others share, the CPU time of the same work drifts with their load by more
than the difference measured here; --together runs each pair at once, over the same window,
so that the drift hits both alike.

    .venv/bin/python bench/cpu_vs_ffmpeg.py [--ladder default|top] [--seconds 60]
                                            [--warmup 5] [--rounds 3] [--together]
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from appliance.capture.synthetic import SyntheticAudio, SyntheticVideo  # noqa: E402
from appliance.media.clock import MediaClock  # noqa: E402
from tests.daemon_proc import free_port  # noqa: E402

W, H, FPS, PRESET = 1280, 720, 30, "veryfast"
SEGMENT_S = 2.0
AUDIO_KBPS, SAMPLE_RATE = 128, 48000
TICKS = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class Rung:
    name: str
    width: int
    height: int
    kbps: int


# The development machine's default ladder (appliance/board.py GENERIC), written out so
# that the benchmark measures the same work whatever the default becomes.
LADDERS = {
    "default": (Rung("720p", 1280, 720, 3000), Rung("480p", 854, 480, 1200),
                Rung("360p", 640, 360, 800)),
    "top": (Rung("720p", 1280, 720, 3000),),
}


def x264_params(kbps: int) -> str:
    """What appliance/capture/encoder.py VideoEncoder._open gives libx264 (keep in step):
    keyint above the GOP, IDRs forced at segment boundaries, VBV of one second."""
    gop = max(1, round(SEGMENT_S * FPS))
    return (f"keyint={2 * gop}:min-keyint={gop}:scenecut=0:forced-idr=1:repeat-headers=1:"
            f"vbv-maxrate={kbps}:vbv-bufsize={kbps}")


# -- measuring a process ------------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS  # utime + stime, all threads


def context_switches(pid: int) -> int:
    """Context switches of the process's live threads so far: each is a thread going to
    sleep or being preempted, a cost the CPU time of a many-threaded process includes."""
    total = 0
    for status in Path(f"/proc/{pid}/task").glob("*/status"):
        try:
            lines = status.read_text().splitlines()
        except OSError:  # the thread ended meanwhile
            continue
        total += sum(int(line.split()[1]) for line in lines
                     if "ctxt_switches:" in line)
    return total


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


@dataclass
class Run:
    cpu_s: float  # CPU seconds over the measured window
    wall_s: float
    rss_mb: float  # peak RSS of the whole run
    switches: int  # context switches over the measured window

    @property
    def percent(self) -> float:
        return self.cpu_s / self.wall_s * 100

    @property
    def switches_per_s(self) -> float:
        return self.switches / self.wall_s


def measure(proc: subprocess.Popen[bytes], warmup: float, seconds: float,
            after_warmup: Callable[[], None] = lambda: None,
            start: threading.Barrier | None = None) -> Run:
    """CPU over `seconds` after `warmup`; with `start`, from when every party is ready."""
    time.sleep(warmup)
    if proc.poll() is not None:
        raise SystemExit(f"process exited early ({proc.returncode})")
    after_warmup()
    if start is not None:
        start.wait(timeout=60)
    s0, c0, t0 = context_switches(proc.pid), cpu_seconds(proc.pid), time.monotonic()
    time.sleep(seconds)
    c1, t1, s1 = cpu_seconds(proc.pid), time.monotonic(), context_switches(proc.pid)
    return Run(c1 - c0, t1 - t0, peak_rss_mb(proc.pid), s1 - s0)


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


# -- x264's own record of its options -------------------------------------------------------


def x264_options(media: bytes) -> dict[str, str]:
    """The option string x264 writes into its first frame (a user-data SEI), as a dict."""
    m = re.search(rb"x264 - core (\d+).*? options: ([^\x00]*)", media)
    if not m:
        return {}
    opts = dict(kv.split("=", 1) for kv in m.group(2).decode(errors="replace").split()
                if "=" in kv)
    opts["core"] = m.group(1).decode()
    return opts


def options_diff(ours: dict[str, str], theirs: dict[str, str]) -> str:
    keys = sorted(set(ours) | set(theirs))
    diffs = [f"{k} {ours.get(k, '-')}/{theirs.get(k, '-')}" for k in keys
             if ours.get(k) != theirs.get(k)]
    return ", ".join(diffs) if diffs else "identical"


# -- the appliance ----------------------------------------------------------------------------


def appliance_config(port: int, ladder: tuple[Rung, ...]) -> str:
    rungs = "".join(
        f'[[video.ladder]]\nname = "{r.name}"\nwidth = {r.width}\nheight = {r.height}\n'
        f"bitrate_kbps = {r.kbps}\n" for r in ladder)
    return (
        f'[web]\nlisten = "127.0.0.1:{port}"\n'
        f'[video]\nsource = "synthetic"\nwidth = {W}\nheight = {H}\nfps = {FPS}\n'
        f'encoder = "x264"\nx264_preset = "{PRESET}"\n{rungs}'
        f'[audio]\nenabled = true\nsource = "synthetic"\nbitrate_kbps = {AUDIO_KBPS}\n'
        f"[packager]\nsegment_s = {SEGMENT_S}\n"
    )


def fetch(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=5) as r:
        return bytes(r.read())


def appliance_segments(base: str, ladder: tuple[Rung, ...], into: dict[str, bytes]) -> None:
    """The oldest listed segment of each rung: the run's first while the window holds it,
    the one with x264's SEI."""
    for r in ladder:
        playlist = fetch(f"{base}/live/{r.name}/index.m3u8").decode()
        segs = re.findall(r"^seg\d+\.m4s$", playlist, re.M)
        into[r.name] = fetch(f"{base}/live/{r.name}/{segs[0]}") if segs else b""


def run_appliance(work: Path, ladder: tuple[Rung, ...], warmup: float, seconds: float,
                  start: threading.Barrier | None = None) -> tuple[Run, dict[str, bytes]]:
    port = free_port()
    cfg = work / "appliance.toml"
    cfg.write_text(appliance_config(port, ladder))
    log = work / "appliance.log"
    with open(log, "wb") as logf:
        proc = subprocess.Popen(
            [str(ROOT / ".venv/bin/appliance"), "run", "--config", str(cfg), "--state-dir",
             str(work / "state")], stdout=logf, stderr=subprocess.STDOUT,
        )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 20
        while True:  # count the warm-up from the first served playlist of every rung
            try:
                for r in ladder:
                    fetch(f"{base}/live/{r.name}/index.m3u8")
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit(f"appliance did not serve media:\n{log.read_text()}") from None
                time.sleep(0.1)
        segments: dict[str, bytes] = {}
        run = measure(proc, warmup, seconds, lambda: appliance_segments(base, ladder, segments),
                      start)
    finally:
        stop(proc)
    return run, segments


# -- ffmpeg -------------------------------------------------------------------------------------


def write_raw_source(work: Path, seconds: int) -> tuple[Path, Path, float]:
    """Raw video and audio of the synthetic source, and the CPU seconds that drawing one
    second of it costs (the appliance draws it live, ffmpeg only reads it)."""
    clock = MediaClock()
    video, audio = SyntheticVideo(W, H, FPS, clock), SyntheticAudio(SAMPLE_RATE, 2, clock)
    vpath, apath = work / "video.yuv", work / "audio.s16"
    drawing = 0.0
    with open(vpath, "wb") as vf:
        for n in range(seconds * FPS):
            t0 = time.process_time()
            frame = video.render(n, n * 1_000_000_000 // FPS)
            drawing += time.process_time() - t0
            vf.write(frame.to_ndarray().tobytes())
    with open(apath, "wb") as af:
        for k in range(seconds * SAMPLE_RATE // 1024):
            t0 = time.process_time()
            planar = audio.render(k * 1024).to_ndarray()  # fltp: (channels, samples)
            drawing += time.process_time() - t0
            af.write((planar.T * 32768).round().astype("<i2").tobytes())  # packed s16
    return vpath, apath, drawing / seconds


def ffmpeg_argv(vpath: Path, apath: Path, out: Path, ladder: tuple[Rung, ...]) -> list[str]:
    n = len(ladder)
    # The appliance scales only rungs smaller than the capture, with swscale's bilinear.
    chains = [f"[0:v]split={n}" + "".join(f"[s{i}]" for i in range(n))]
    for i, r in enumerate(ladder):
        if (r.width, r.height) == (W, H):
            chains.append(f"[s{i}]null[v{i}]")
        else:
            chains.append(f"[s{i}]scale=w={r.width}:h={r.height}:flags=bilinear[v{i}]")
    argv = [
        "ffmpeg", "-nostdin", "-loglevel", "error",
        "-re", "-stream_loop", "-1", "-f", "rawvideo", "-pix_fmt", "yuv420p",
        "-s", f"{W}x{H}", "-framerate", str(FPS), "-i", str(vpath),
        "-re", "-stream_loop", "-1", "-f", "s16le", "-ar", str(SAMPLE_RATE), "-ac", "2",
        "-i", str(apath),
        "-filter_complex", ";".join(chains),
    ]
    for i in range(n):
        argv += ["-map", f"[v{i}]"]
    argv += ["-map", "1:a",
             "-c:v", "libx264", "-preset", PRESET, "-tune", "zerolatency",
             # IDRs at media-time segment boundaries, as the appliance forces them.
             "-force_key_frames", f"expr:gte(t,n_forced*{SEGMENT_S})"]
    for i, r in enumerate(ladder):
        argv += [f"-b:v:{i}", f"{r.kbps}k", f"-x264-params:v:{i}", x264_params(r.kbps)]
    argv += ["-c:a", "aac", "-b:a", f"{AUDIO_KBPS}k"]
    streams = " ".join([f"v:{i},agroup:aud,name:{r.name}" for i, r in enumerate(ladder)]
                       + ["a:0,agroup:aud,name:audio"])
    argv += [
        "-f", "hls", "-hls_segment_type", "fmp4", "-hls_time", str(SEGMENT_S),
        "-hls_list_size", "12", "-hls_flags", "delete_segments+independent_segments",
        "-var_stream_map", streams, "-master_pl_name", "index.m3u8",
        "-hls_fmp4_init_filename", "init.mp4",
        "-hls_segment_filename", str(out / "%v" / "seg%d.m4s"), str(out / "%v" / "index.m3u8"),
    ]
    return argv


def ffmpeg_segments(out: Path, ladder: tuple[Rung, ...], into: dict[str, bytes]) -> None:
    """The first segment of each rung (the one with x264's SEI), before it is deleted."""
    for r in ladder:
        first = out / r.name / "seg0.m4s"
        into[r.name] = first.read_bytes() if first.is_file() else b""


def run_ffmpeg(work: Path, vpath: Path, apath: Path, ladder: tuple[Rung, ...], warmup: float,
               seconds: float, start: threading.Barrier | None = None
               ) -> tuple[Run, dict[str, bytes]]:
    out = work / "hls"
    shutil.rmtree(out, ignore_errors=True)
    for r in [*ladder, Rung("audio", 0, 0, 0)]:
        (out / r.name).mkdir(parents=True)
    argv = ffmpeg_argv(vpath, apath, out, ladder)
    err = work / "ffmpeg.err"
    with open(err, "wb") as errf:
        proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=errf)
    try:
        segments: dict[str, bytes] = {}
        run = measure(proc, warmup, seconds, lambda: ffmpeg_segments(out, ladder, segments),
                      start)
    except SystemExit:
        raise SystemExit(f"ffmpeg failed:\n{' '.join(argv)}\n{err.read_text()}") from None
    finally:
        stop(proc)
    return run, segments


# -- the report ---------------------------------------------------------------------------------


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ladder", choices=sorted(LADDERS), default="default",
                    help="default: 720p/480p/360p; top: the 720p rung alone")
    ap.add_argument("--seconds", type=float, default=60, help="measured time per run")
    ap.add_argument("--warmup", type=float, default=5)
    ap.add_argument("--rounds", type=int, default=3,
                    help="alternating appliance/ffmpeg pairs; the median ratio is reported")
    ap.add_argument("--together", action="store_true",
                    help="run each pair at once over the same window instead of in turn")
    args = ap.parse_args()
    ladder = LADDERS[args.ladder]
    shm = Path("/dev/shm") if Path("/dev/shm").is_dir() else None
    work = Path(tempfile.mkdtemp(prefix="bench-cpu-", dir=shm))
    rows: list[tuple[Run, Run]] = []
    try:
        print(f"preparing 4 s of the synthetic source for ffmpeg in {work} ...", flush=True)
        vpath, apath, drawing = write_raw_source(work, 4)
        for r in range(args.rounds):
            if args.together:
                start = threading.Barrier(2)
                with ThreadPoolExecutor(2) as pool:
                    a_run = pool.submit(run_appliance, work, ladder, args.warmup, args.seconds,
                                        start)
                    f_run = pool.submit(run_ffmpeg, work, vpath, apath, ladder, args.warmup,
                                        args.seconds, start)
                    (a, a_segs), (f, f_segs) = a_run.result(), f_run.result()
            else:
                a, a_segs = run_appliance(work, ladder, args.warmup, args.seconds)
                f, f_segs = run_ffmpeg(work, vpath, apath, ladder, args.warmup, args.seconds)
            rows.append((a, f))
            print(f"round {r + 1}: appliance {a.cpu_s:6.1f} CPU s ({a.percent:5.1f}%) "
                  f"{a.rss_mb:6.1f} MB | ffmpeg {f.cpu_s:6.1f} CPU s ({f.percent:5.1f}%) "
                  f"{f.rss_mb:6.1f} MB | CPU ratio {a.percent / f.percent:.3f}", flush=True)
            if r == 0:
                for rung in ladder:
                    ours, theirs = x264_options(a_segs[rung.name]), x264_options(
                        f_segs[rung.name])
                    found = "" if ours and theirs else " (an SEI was not found)"
                    print(f"  x264 options {rung.name}, appliance/ffmpeg: "
                          f"{options_diff(ours, theirs)}{found}", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    med = statistics.median
    ratios = [a.percent / f.percent for a, f in rows]
    rungs = " + ".join(f"{r.name} {r.kbps}k" for r in ladder)
    print(f"\n{rungs} x264 {PRESET} zerolatency, {FPS} fps + AAC {AUDIO_KBPS}k; "
          f"{args.rounds} rounds of {args.seconds:.0f} s each"
          + (", appliance and ffmpeg at once" if args.together else ""))
    print(f"{'':12} {'CPU s/round':>12} {'CPU % of a core':>16} {'peak RSS MB':>12} "
          f"{'switches/s':>11}")
    for name, runs in (("appliance", [a for a, _ in rows]), ("ffmpeg", [f for _, f in rows])):
        print(f"{name:12} {med(x.cpu_s for x in runs):12.1f} {med(x.percent for x in runs):16.1f}"
              f" {max(x.rss_mb for x in runs):12.1f} {med(x.switches_per_s for x in runs):11.0f}")
    print(f"ratio CPU appliance/ffmpeg: median {med(ratios):.3f}, min {min(ratios):.3f}, "
          f"max {max(ratios):.3f}  (target <= 1.10)")
    # The appliance also draws the synthetic picture and tone, which ffmpeg only reads;
    # a camera costs a copy instead. Shown apart, measured while writing ffmpeg's input.
    drawn = [(a.percent - drawing * 100) / f.percent for a, f in rows]
    print(f"  without drawing the synthetic source ({drawing * 100:.1f}% of a core): "
          f"median {med(drawn):.3f}")
    print(f"ratio peak RSS appliance/ffmpeg: {med(a.rss_mb / f.rss_mb for a, f in rows):.3f}")


if __name__ == "__main__":
    main()
