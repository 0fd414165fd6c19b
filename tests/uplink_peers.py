"""Real origins on loopback for the uplink tests, and real media to push to them.

- `NginxRtmp`: nginx with libnginx-mod-rtmp on a free port, recording what it receives,
  optionally asking a small HTTP server of the test (`KeyCheck`) whether the stream key
  is right (nginx-rtmp's `on_publish`), optionally with a TLS front (nginx's stream
  module) whose certificate comes from a CA made by the test (`make_tls`).
- `SrtPeer`: srt-live-transmit as listener or caller, with a passphrase, writing what it
  receives to a file and its statistics (JSON) to another.
- `MediaFeeder`: the real synthetic sources and encoders feeding a real MediaBus at real
  time pace, for the in-process tests of Destination / UplinkManager / Recorder.
- `ffprobe_*`: what a file holds, per stream and per packet.

Everything is a real peer; only the camera is synthetic.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
import urllib.parse
from collections.abc import Callable, Collection, Iterator, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from appliance.capture.encoder import AudioEncoder, VideoEncoder
from appliance.capture.synthetic import SyntheticAudio, SyntheticVideo
from appliance.config.schema import Uplink
from appliance.media.bus import MediaBus
from appliance.media.clock import MediaClock
from appliance.media.packet import EncodedPacket
from appliance.status import StatusHub
from tests.daemon_proc import free_port

NGINX_MODULES = Path("/usr/lib/nginx/modules")
RTMP_MODULE = NGINX_MODULES / "ngx_rtmp_module.so"
STREAM_MODULE = NGINX_MODULES / "ngx_stream_module.so"
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


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex((host, port)) == 0


# -- the stream-key check (nginx-rtmp on_publish) ------------------------------------------


@dataclass
class Publish:
    at: float  # time.monotonic() when nginx asked
    name: str  # the stream key the client published with
    allowed: bool


class KeyCheck:
    """The HTTP end of nginx-rtmp's `on_publish`: 2xx for the right keys only (any key
    when `keys` is None). Every publish is noted with its time: when the origin saw it."""

    def __init__(self, keys: Collection[str] | None = None):
        self.keys = None if keys is None else frozenset(keys)
        self.calls: list[Publish] = []
        check = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - the stdlib's name
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                form = urllib.parse.parse_qs(body.decode())
                name = form.get("name", [""])[0]
                ok = check.keys is None or name in check.keys
                check.calls.append(Publish(time.monotonic(), name, ok))
                self.send_response(200 if ok else 403)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = int(self._server.server_address[1])
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/publish"

    def publishes(self, allowed: bool | None = None, name: str | None = None,
                  after: float = 0.0) -> list[Publish]:
        return [c for c in list(self.calls) if (allowed is None or c.allowed == allowed)
                and (name is None or c.name == name) and c.at >= after]

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


# -- TLS material ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Tls:
    ca: Path  # the CA's certificate (PEM): what the appliance's ca_file names
    cert: Path  # the server's certificate chain
    key: Path


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run([require("openssl"), *args], cwd=cwd, check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def make_ca(directory: Path, name: str = "ca") -> tuple[Path, Path]:
    """A fresh CA: (certificate, key)."""
    directory.mkdir(parents=True, exist_ok=True)
    cert, key = directory / f"{name}.pem", directory / f"{name}.key"
    _openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
             "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "2",
             "-subj", f"/CN=Appliance test {name}",
             "-addext", "basicConstraints=critical,CA:TRUE",
             "-addext", "keyUsage=critical,keyCertSign,cRLSign", cwd=directory)
    return cert, key


def make_tls(directory: Path, hostname: str = "localhost",
             ca: tuple[Path, Path] | None = None) -> Tls:
    """A server certificate for `hostname` signed by `ca` (a new CA by default)."""
    ca_cert, ca_key = ca or make_ca(directory)
    stem = f"server-{hostname}"
    key, csr, cert = (directory / f"{stem}.key", directory / f"{stem}.csr",
                      directory / f"{stem}.pem")
    ext = directory / f"{stem}.ext"
    alt = f"DNS:{hostname}" + (",IP:127.0.0.1" if hostname == "localhost" else "")
    ext.write_text(f"subjectAltName={alt}\nbasicConstraints=CA:FALSE\n"
                   "keyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n")
    _openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
             "-keyout", str(key), "-out", str(csr), "-subj", f"/CN={hostname}", cwd=directory)
    _openssl("x509", "-req", "-in", str(csr), "-CA", str(ca_cert), "-CAkey", str(ca_key),
             "-CAcreateserial", "-out", str(cert), "-days", "2", "-extfile", str(ext),
             cwd=directory)
    return Tls(ca_cert, cert, key)


# -- nginx-rtmp --------------------------------------------------------------------------------


def _children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(p) for p in text.split()]


def spawn_nginx(workdir: Path, conf: Path, ports: Sequence[int], errors: Callable[[], str],
                timeout: float) -> subprocess.Popen[bytes]:
    """nginx in the foreground with `conf`, its prefix and error log in `workdir`, its
    stderr appended to workdir/stderr.log; returns once every port accepts connections
    (or raises with `errors()` if nginx exits first)."""
    with open(workdir / "stderr.log", "ab") as err:
        proc = subprocess.Popen(
            [require("nginx"), "-p", str(workdir), "-c", str(conf),
             "-e", str(workdir / "error.log")],
            stdout=subprocess.DEVNULL, stderr=err, start_new_session=True)

    def up() -> bool:
        if proc.poll() is not None:
            raise RuntimeError(f"nginx exited {proc.returncode}: {errors()}")
        return all(port_open(p) for p in ports)

    wait_for(up, timeout, "nginx to listen")
    return proc


class NginxRtmp:
    """nginx with the RTMP module on 127.0.0.1:`port`, application `live`, recording every
    stream to `record_dir`. Stop and start it again on the same port to play an origin
    that goes away; `pause` freezes it (an origin that stops reading)."""

    def __init__(self, workdir: Path, key_check: KeyCheck | None = None,
                 tls: Sequence[Tls] = ()):
        require("nginx")
        require_file(RTMP_MODULE, "libnginx-mod-rtmp")
        if tls:
            require_file(STREAM_MODULE, "libnginx-mod-stream")
        self.workdir = workdir
        self.record_dir = workdir / "rec"
        self.record_dir.mkdir(parents=True, exist_ok=True)
        self.key_check, self.tls = key_check, tls
        self.port = free_port()
        self.tls_ports = [free_port() for _ in tls]  # a TLS front per certificate
        self.tls_log = workdir / "tls-access.log"  # a line per TLS session: the SNI name
        self.proc: subprocess.Popen[bytes] | None = None
        self.conf = workdir / "nginx.conf"
        self.conf.write_text(self._config())

    @property
    def url(self) -> str:
        return f"rtmp://127.0.0.1:{self.port}/live"

    def tls_url(self, front: int = 0, host: str = "localhost") -> str:
        return f"rtmps://{host}:{self.tls_ports[front]}/live"

    def _config(self) -> str:
        w = self.workdir
        modules = [RTMP_MODULE] + ([STREAM_MODULE] if self.tls else [])
        lines = [f"load_module {m};" for m in modules]
        if os.geteuid() == 0:
            # Workers would run as nobody, who cannot write under pytest's 0700 tmp dirs.
            lines.append("user root;")
        lines += [
            "daemon off;", "master_process on;", "worker_processes 1;",
            f"pid {w}/nginx.pid;", f"error_log {w}/error.log info;",
            "events { worker_connections 128; }",
            "rtmp {", "  server {", f"    listen 127.0.0.1:{self.port};",
            "    chunk_size 4096;", "    application live {", "      live on;",
            "      record all;", f"      record_path {self.record_dir};",
            "      record_unique on;",
        ]
        if self.key_check is not None:
            lines.append(f"      on_publish {self.key_check.url};")
        lines += ["    }", "  }", "}"]
        if self.tls:
            lines += ["stream {", "  log_format sni 'sni=$ssl_server_name status=$status';",
                      f"  access_log {self.tls_log} sni;"]
            for port, tls in zip(self.tls_ports, self.tls, strict=True):
                lines += [
                    "  server {", f"    listen 127.0.0.1:{port} ssl;",
                    f"    ssl_certificate {tls.cert};", f"    ssl_certificate_key {tls.key};",
                    f"    proxy_pass 127.0.0.1:{self.port};", "  }",
                ]
            lines.append("}")
        return "\n".join(lines) + "\n"

    def start(self, timeout: float = 10) -> float:
        """Start and wait until the port accepts connections. Returns time.monotonic() of
        the start: a client may well connect before this returns."""
        assert self.proc is None or self.proc.poll() is not None, "already running"
        started = time.monotonic()
        self.proc = spawn_nginx(self.workdir, self.conf, [self.port, *self.tls_ports],
                                self.errors, timeout)
        return started

    def stop(self, timeout: float = 10) -> float:
        """Fast shutdown (SIGTERM): connections are cut. Returns when it is gone."""
        proc = self.proc
        if proc is not None and proc.poll() is None:
            self.resume()
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        return time.monotonic()

    def pids(self) -> list[int]:
        if self.proc is None or self.proc.poll() is not None:
            return []
        return [self.proc.pid, *_children(self.proc.pid)]

    def pause(self) -> None:
        """Freeze master and workers: connections stay open, nothing is read."""
        for pid in self.pids():
            os.kill(pid, signal.SIGSTOP)

    def resume(self) -> None:
        for pid in self.pids():
            os.kill(pid, signal.SIGCONT)

    def publishes(self, allowed: bool | None = True, name: str | None = None,
                  after: float = 0.0) -> list[Publish]:
        """The publishes the origin saw (allowed ones by default)."""
        assert self.key_check is not None, "no on_publish check configured"
        return self.key_check.publishes(allowed, name, after)

    def errors(self) -> str:
        log = self.workdir / "error.log"
        return log.read_text(errors="replace")[-3000:] if log.exists() else ""

    def recordings(self) -> list[Path]:
        return sorted(self.record_dir.glob("*.flv"), key=lambda p: p.stat().st_mtime)

    def close(self) -> None:
        self.stop()


@contextlib.contextmanager
def nginx_rtmp(workdir: Path, keys: Collection[str] | None = None,
               tls: Sequence[Tls] = ()) -> Iterator[NginxRtmp]:
    """A started NginxRtmp that takes only `keys` (any when None) and notes every publish
    (`.publishes`), stopped afterwards."""
    check = KeyCheck(keys)
    nginx = NginxRtmp(workdir, check, tls)
    try:
        nginx.start()
        yield nginx
    finally:
        nginx.close()
        check.close()


# -- srt-live-transmit ---------------------------------------------------------------------


class SrtPeer:
    """srt-live-transmit receiving SRT into `out` (MPEG-TS as sent), stats as JSON lines.

    `mode="listener"`: it listens on `port` (the appliance calls it, SRT caller mode);
    `mode="caller"`: it calls the appliance listening on `port`. The passphrase is on its
    command line: that is the test peer's, never the appliance's.
    """

    def __init__(self, workdir: Path, passphrase: str | None = None,
                 mode: str = "listener", port: int | None = None, latency_ms: int = 120,
                 netns: str | None = None, host: str = "127.0.0.1"):
        require("srt-live-transmit")
        workdir.mkdir(parents=True, exist_ok=True)
        self.workdir, self.passphrase, self.mode = workdir, passphrase, mode
        self.port = port or free_udp_port()
        self.latency_ms, self.netns, self.host = latency_ms, netns, host
        self.out = workdir / "received.ts"
        self.stats_path = workdir / "stats.json"
        self.stderr_path = workdir / "srt-live-transmit.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.runs = 0

    def uri(self) -> str:
        params = {"mode": self.mode, "latency": str(self.latency_ms)}
        if self.passphrase:
            params["passphrase"] = self.passphrase
        # srt-live-transmit takes the query as it is, without %-decoding: keep the test
        # passphrases to letters, digits and -_.
        assert all(v.replace("-", "").replace("_", "").replace(".", "").isalnum()
                   for v in params.values()), params
        query = "&".join(f"{k}={v}" for k, v in params.items())
        return f"srt://{self.host}:{self.port}?{query}"

    def start(self) -> float:
        """Start (a listener: and wait until it is bound). Returns time.monotonic() of the
        start: a caller may well connect before this returns."""
        assert self.proc is None or self.proc.poll() is not None, "already running"
        started = time.monotonic()
        self.runs += 1
        argv = [require("srt-live-transmit"), "-a", "no", "-s", "100",
                "-statsout", str(self.stats_path), "-pf", "json", "-f",
                self.uri(), "file://con"]
        if self.netns:
            argv = [require("ip"), "netns", "exec", self.netns, *argv]
        with open(self.out, "ab") as out, open(self.stderr_path, "ab") as err:
            self.proc = subprocess.Popen(argv, stdout=out, stderr=err, start_new_session=True)
        if self.mode == "listener":
            # UDP: nothing to connect to. Wait until the socket is bound.
            wait_for(lambda: self._bound(), 5, "srt-live-transmit to bind")
        return started

    def _bound(self) -> bool:
        if self.proc is None or self.proc.poll() is not None:
            raise RuntimeError(f"srt-live-transmit exited: {self.log()}")
        if self.netns:
            time.sleep(0.3)
            return True
        hexport = f":{self.port:04X} "
        with contextlib.suppress(OSError):
            for table in ("/proc/net/udp", "/proc/net/udp6"):
                if hexport in Path(table).read_text():
                    return True
        return False

    def stop(self, sig: int = signal.SIGINT, timeout: float = 5) -> float:
        """SIGINT: it closes its connection (the sender hears of it); SIGKILL: it vanishes
        without a word, as an origin on a pulled cable does. Returns when it is gone."""
        proc = self.proc
        if proc is not None and proc.poll() is None:
            proc.send_signal(sig)
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        return time.monotonic()

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def received(self) -> int:
        return self.out.stat().st_size if self.out.exists() else 0

    def connections(self) -> int:
        """Connections it accepted as listener, over all its runs (from its stderr)."""
        return self.log(whole=True).count("Accepted SRT source connection")

    def log(self, whole: bool = False) -> str:
        if not self.stderr_path.exists():
            return ""
        text = self.stderr_path.read_text(errors="replace")
        return text if whole else text[-3000:]

    def stats(self) -> list[dict[str, Any]]:
        """Every report srt-live-transmit wrote (JSON objects, one after another)."""
        if not self.stats_path.exists():
            return []
        text = self.stats_path.read_text(errors="replace")
        out: list[dict[str, Any]] = []
        decoder = json.JSONDecoder()
        i = 0
        while True:
            start = text.find("{", i)
            if start < 0:
                return out
            try:
                obj, i = decoder.raw_decode(text, start)
            except json.JSONDecodeError:
                return out  # the last report is being written
            if isinstance(obj, dict):
                out.append(obj)

    def receiver_drops(self) -> int:
        """Packets the receiver dropped (too late to play), the highest total reported."""
        drops = [int(r.get("recv", {}).get("packetsDropped", 0)) for r in self.stats()]
        return max(drops, default=0)

    def close(self) -> None:
        self.stop()


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# -- media -------------------------------------------------------------------------------------


@dataclass
class MediaFeeder:
    """The synthetic camera and microphone through the real encoders into `bus`, in real
    time, on two threads, as the capture pipeline does (a smaller picture: these tests
    are about the uplinks, and the machine is shared)."""

    bus: MediaBus
    width: int = 640
    height: int = 360
    fps: int = 30
    bitrate_kbps: int = 800
    gop_s: float = 1.0
    audio: bool = True
    video_track: str = "main"
    clock: MediaClock = field(default_factory=MediaClock)
    publish_max_s: float = 0.0  # the longest a bus.publish call took
    packets: int = 0
    errors: list[BaseException] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self) -> MediaFeeder:
        self._threads = [threading.Thread(target=self._guard, args=(self._video,),
                                          name="feed-video", daemon=True)]
        if self.audio:
            self._threads.append(threading.Thread(target=self._guard, args=(self._audio,),
                                                  name="feed-audio", daemon=True))
        for t in self._threads:
            t.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=5)
        if self.errors:
            raise self.errors[0]

    def __enter__(self) -> MediaFeeder:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _guard(self, body: Callable[[], None]) -> None:
        try:
            body()
        except BaseException as exc:  # reported by stop()
            self.errors.append(exc)

    def _publish(self, pkt: EncodedPacket) -> None:
        t0 = time.perf_counter()
        self.bus.publish(pkt)
        took = time.perf_counter() - t0
        with self._lock:
            self.publish_max_s = max(self.publish_max_s, took)
            self.packets += 1

    def _video(self) -> None:
        src = SyntheticVideo(self.width, self.height, self.fps, self.clock)
        enc = VideoEncoder(self.video_track, self.width, self.height, self.fps,
                           self.bitrate_kbps, self.gop_s, self.clock, "ultrafast")
        added = False
        while not self._stop.is_set():
            for pkt in enc.encode(src.read()):
                if not added and enc.info is not None:
                    self.bus.add_track(enc.info)
                    added = True
                if added:
                    self._publish(pkt)

    def _audio(self) -> None:
        src = SyntheticAudio(48000, 2, self.clock)
        enc = AudioEncoder(48000, 2, 96, self.clock)
        self.bus.add_track(enc.info)
        while not self._stop.is_set():
            for pkt in enc.encode(src.read()):
                self._publish(pkt)


def uplink(**fields: Any) -> Uplink:
    """An `[[uplink]]` entry, validated as the config loader does."""
    return Uplink.model_validate(fields)


# -- the status hub ----------------------------------------------------------------------------


def section(hub: StatusHub, name: str) -> dict[str, Any]:
    return dict(hub.snapshot()["sections"].get(name, {}))


def wait_state(hub: StatusHub, name: str, state: str, timeout: float) -> float:
    """Wait until `uplink.<name>` is in `state`; time.monotonic() when it was seen."""
    wait_for(lambda: section(hub, f"uplink.{name}").get("state") == state, timeout,
             f"uplink.{name} to be {state} (now {section(hub, f'uplink.{name}')})", step=0.01)
    return time.monotonic()


class ObservedHub(StatusHub):
    """The real status hub, noting every update with its time, so that no state is
    missed however briefly a section was in it."""

    def __init__(self) -> None:
        super().__init__()
        self.updates: list[tuple[float, str, dict[str, Any]]] = []  # (monotonic, section, …)
        self.transitions: list[tuple[float, str, str]] = []  # (monotonic, section, state)

    def update(self, section: str, **fields: Any) -> None:
        now = time.monotonic()
        self.updates.append((now, section, dict(fields)))
        if "state" in fields:
            self.transitions.append((now, section, str(fields["state"])))
        super().update(section, **fields)

    def values(self, section: str, key: str) -> list[Any]:
        """The distinct values `key` of `section` was given, in order."""
        out: list[Any] = []
        for _, sec, fields in list(self.updates):
            if sec == section and key in fields and (not out or out[-1] != fields[key]):
                out.append(fields[key])
        return out

    def states(self, name: str, after: float = 0.0) -> list[str]:
        """The states `uplink.<name>` was given since `after`."""
        return [st for t, sec, st in list(self.transitions)
                if sec == f"uplink.{name}" and t >= after]

    def first(self, name: str, state: str, after: float) -> float | None:
        """When `uplink.<name>` was first given `state` at or after `after`."""
        return next((t for t, sec, st in list(self.transitions)
                     if sec == f"uplink.{name}" and st == state and t >= after), None)


# -- ffprobe -----------------------------------------------------------------------------------


def ffprobe_streams(path: Path) -> dict[str, Any]:
    out = subprocess.run(
        [require("ffprobe"), "-v", "error", "-of", "json", "-show_streams", "-show_format",
         str(path)], capture_output=True, check=True, timeout=60)
    return dict(json.loads(out.stdout))


def ffprobe_packets(path: Path) -> list[dict[str, Any]]:
    """Every packet: codec_type, stream_index, pts_time, dts_time, flags."""
    out = subprocess.run(
        [require("ffprobe"), "-v", "error", "-of", "json", "-show_entries",
         "packet=stream_index,codec_type,pts_time,dts_time,flags,size", "-show_packets",
         str(path)], capture_output=True, check=True, timeout=60)
    return list(json.loads(out.stdout).get("packets", []))


def codecs_of(path: Path) -> dict[str, str]:
    """{"video": "h264", "audio": "aac"} for a file with those streams."""
    return {s["codec_type"]: s["codec_name"] for s in ffprobe_streams(path)["streams"]}


def dts_regressions(packets: list[dict[str, Any]]) -> list[str]:
    """Where a stream's decoding time goes back (one line each; empty when none)."""
    last: dict[int, float] = {}
    bad = []
    for i, p in enumerate(packets):
        if p.get("dts_time") in (None, "N/A"):
            continue
        s, dts = int(p["stream_index"]), float(p["dts_time"])
        if s in last and dts < last[s]:
            bad.append(f"packet {i} stream {s}: dts {dts} after {last[s]}")
        last[s] = dts
    return bad


def media_span(packets: list[dict[str, Any]], kind: str) -> float:
    """Last minus first pts of the `kind` packets, in seconds."""
    times = [float(p["pts_time"]) for p in packets
             if p.get("codec_type") == kind and p.get("pts_time") not in (None, "N/A")]
    return max(times) - min(times) if times else 0.0


def cmdlines() -> dict[int, str]:
    """Every process's command line (NULs as spaces)."""
    out = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                out[int(entry.name)] = (entry / "cmdline").read_bytes().replace(
                    b"\0", b" ").decode(errors="replace")
    return out


# -- a link that can stall --------------------------------------------------------------------


class StallableLink:
    """A TCP relay on loopback in front of an origin: while `stalled`, it stops reading
    from the client, as a congested or frozen path does. Small socket buffers on both
    sides of it, so a stall reaches the sender in a fraction of a second instead of after
    megabytes of loopback buffering."""

    BUFFER = 32 * 1024

    def __init__(self, target_port: int, host: str = "127.0.0.1"):
        self.target = (host, target_port)
        self._listener = socket.socket()
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, self.BUFFER)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(8)
        self.port = int(self._listener.getsockname()[1])
        self._flowing = threading.Event()
        self._flowing.set()
        self._closed = False
        self._socks: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def stall(self) -> None:
        self._flowing.clear()

    def flow(self) -> None:
        self._flowing.set()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            self._socks += [client, upstream]
            threading.Thread(target=self._pump, args=(client, upstream, True),
                             daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, False),
                             daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, stallable: bool) -> None:
        try:
            while True:
                if stallable:
                    self._flowing.wait()
                data = src.recv(4096)
                if not data:
                    break
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self._closed = True
        self._flowing.set()
        self._listener.close()
        for s in self._socks:
            with contextlib.suppress(OSError):
                s.close()
