"""nginx with libnginx-mod-rtmp on a free loopback port, recording what it receives,
optionally asking a small HTTP server of the test (`KeyCheck`) whether the stream key is
right (nginx-rtmp's `on_publish`), optionally with a TLS front (nginx's stream module)
whose certificate comes from a CA made by the test (`tests.uplink_peer_tls`)."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import threading
import time
import urllib.parse
from collections.abc import Callable, Collection, Iterator, Sequence
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from tests.daemon_proc import free_port
from tests.uplink_peer_common import require, require_file, wait_for
from tests.uplink_peer_tls import Tls

NGINX_MODULES = Path("/usr/lib/nginx/modules")
RTMP_MODULE = NGINX_MODULES / "ngx_rtmp_module.so"
STREAM_MODULE = NGINX_MODULES / "ngx_stream_module.so"


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
