"""CPU and peak RSS of `appliance run` (one 720p30 rung + AAC, LL-HLS) against the ffmpeg
command line doing the same x264 + AAC encode to fMP4 HLS, in the same run.

ffmpeg gets the same pictures: a few seconds of the appliance's synthetic source
written raw to /dev/shm and looped in real time, so both encode the same content.

    .venv/bin/python bench/cpu_vs_ffmpeg.py [--seconds 60] [--warmup 5] [--rounds 3]
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from appliance.capture.synthetic import SyntheticAudio, SyntheticVideo  # noqa: E402
from appliance.media.clock import MediaClock  # noqa: E402
from tests.daemon_proc import free_port  # noqa: E402

W, H, FPS, KBPS, PRESET = 1280, 720, 30, 3000, "veryfast"
TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS  # utime + stime, all threads


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def measure(proc: subprocess.Popen[bytes], warmup: float, seconds: float) -> tuple[float, float]:
    time.sleep(warmup)
    if proc.poll() is not None:
        raise SystemExit(f"process exited early ({proc.returncode})")
    c0, t0 = cpu_seconds(proc.pid), time.monotonic()
    time.sleep(seconds)
    c1, t1 = cpu_seconds(proc.pid), time.monotonic()
    rss = peak_rss_mb(proc.pid)
    proc.send_signal(signal.SIGINT)
    proc.wait(timeout=20)
    return (c1 - c0) / (t1 - t0) * 100, rss


def run_appliance(work: Path, warmup: float, seconds: float) -> tuple[float, float]:
    port = free_port()
    cfg = work / "appliance.toml"
    cfg.write_text(
        f'[web]\nlisten = "127.0.0.1:{port}"\n'
        f'[video]\nsource = "synthetic"\nwidth = {W}\nheight = {H}\nfps = {FPS}\n'
        f'x264_preset = "{PRESET}"\n'
        f'[[video.ladder]]\nname = "720p"\nwidth = {W}\nheight = {H}\nbitrate_kbps = {KBPS}\n'
        '[audio]\nenabled = true\nsource = "synthetic"\n'
    )
    proc = subprocess.Popen(
        [str(ROOT / ".venv/bin/appliance"), "run", "--config", str(cfg), "--state-dir",
         str(work / "state")], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 15
    while True:  # count the warm-up from the first served playlist
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/live/720p/index.m3u8", timeout=2)
            break
        except OSError:
            if time.monotonic() > deadline:
                proc.kill()
                raise SystemExit("appliance did not serve media") from None
            time.sleep(0.1)
    return measure(proc, warmup, seconds)


def write_raw_source(work: Path, seconds: int) -> tuple[Path, Path]:
    clock = MediaClock()
    video, audio = SyntheticVideo(W, H, FPS, clock), SyntheticAudio(48000, 2, clock)
    vpath, apath = work / "video.yuv", work / "audio.s16"
    with open(vpath, "wb") as vf:
        for n in range(seconds * FPS):
            vf.write(video.render(n, n * 1_000_000_000 // FPS).to_ndarray().tobytes())
    with open(apath, "wb") as af:
        for k in range(seconds * 48000 // 1024):
            planar = audio.render(k * 1024).to_ndarray()  # fltp: (channels, samples)
            af.write((planar.T * 32768).round().astype("<i2").tobytes())  # packed s16
    return vpath, apath


def run_ffmpeg(work: Path, vpath: Path, apath: Path, warmup: float, seconds: float
               ) -> tuple[float, float]:
    gop = 2 * FPS
    out = work / "hls"
    out.mkdir()
    argv = [
        "ffmpeg", "-nostdin", "-loglevel", "error",
        "-re", "-stream_loop", "-1", "-f", "rawvideo", "-pix_fmt", "yuv420p",
        "-s", f"{W}x{H}", "-r", str(FPS), "-i", str(vpath),
        "-re", "-stream_loop", "-1", "-f", "s16le", "-ar", "48000", "-ac", "2", "-i", str(apath),
        "-c:v", "libx264", "-preset", PRESET, "-tune", "zerolatency", "-b:v", f"{KBPS}k",
        "-x264-params", f"keyint={gop}:min-keyint={gop}:scenecut=0:repeat-headers=1:"
        f"vbv-maxrate={KBPS}:vbv-bufsize={KBPS}",
        "-c:a", "aac", "-b:a", "128k",
        "-f", "hls", "-hls_segment_type", "fmp4", "-hls_time", "2", "-hls_list_size", "12",
        "-hls_flags", "delete_segments+independent_segments", str(out / "index.m3u8"),
    ]
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL)
    return measure(proc, warmup, seconds)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--seconds", type=float, default=60, help="measured time per run")
    ap.add_argument("--warmup", type=float, default=5)
    ap.add_argument("--rounds", type=int, default=3,
                    help="alternating appliance/ffmpeg pairs; the median ratio is reported")
    args = ap.parse_args()
    shm = Path("/dev/shm") if Path("/dev/shm").is_dir() else None
    work = Path(tempfile.mkdtemp(prefix="bench-cpu-", dir=shm))
    rows = []
    try:
        print(f"preparing 4 s of the synthetic source for ffmpeg in {work} ...", flush=True)
        vpath, apath = write_raw_source(work, 4)
        for r in range(args.rounds):
            a_cpu, a_rss = run_appliance(work, args.warmup, args.seconds)
            shutil.rmtree(work / "hls", ignore_errors=True)
            f_cpu, f_rss = run_ffmpeg(work, vpath, apath, args.warmup, args.seconds)
            rows.append((a_cpu, a_rss, f_cpu, f_rss))
            print(f"round {r + 1}: appliance {a_cpu:5.1f}% {a_rss:6.1f} MB | "
                  f"ffmpeg {f_cpu:5.1f}% {f_rss:6.1f} MB | CPU ratio {a_cpu / f_cpu:.3f}",
                  flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    med = statistics.median
    print(f"\n720p{FPS} x264 {PRESET} {KBPS} kbit/s + AAC 128k; {args.rounds} rounds of "
          f"{args.seconds:.0f} s each, medians")
    print(f"{'':12} {'CPU % of a core':>16} {'peak RSS MB':>12}")
    print(f"{'appliance':12} {med(r[0] for r in rows):16.1f} {med(r[1] for r in rows):12.1f}")
    print(f"{'ffmpeg':12} {med(r[2] for r in rows):16.1f} {med(r[3] for r in rows):12.1f}")
    print(f"ratio CPU appliance/ffmpeg = {med(r[0] / r[2] for r in rows):.3f}  (target <= 1.10)")
    print(f"ratio RSS appliance/ffmpeg = {med(r[1] / r[3] for r in rows):.3f}")


if __name__ == "__main__":
    main()
