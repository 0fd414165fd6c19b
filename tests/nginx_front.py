"""The device's nginx front (image/rootfs/etc/nginx/conf.d/appliance.conf) on loopback.

The real site file, with only what ties it to the device moved: its ports (80, 443 and
the daemon's 8080) to free ones on 127.0.0.1, /data/tls to a test directory, the access
point's address (10.42.0.1) to HOTSPOT, and its journal log to a file. Each replacement
must find its text, so the test breaks when the site file changes under it.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

from tests.api_client import LIGHT
from tests.daemon_proc import ROOT, free_port
from tests.uplink_peer_common import require
from tests.uplink_peer_nginx import spawn_nginx

SITE = ROOT / "image" / "rootfs" / "etc" / "nginx" / "conf.d" / "appliance.conf"
HOTSPOT = "127.0.0.2"  # plays the setup access point's 10.42.0.1


class Front:
    def __init__(self, workdir: Path, upstream_port: int, tls_dir: Path):
        self.workdir, self.upstream_port, self.tls_dir = workdir, upstream_port, tls_dir
        self.http_port, self.https_port = free_port(), free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        workdir.mkdir(parents=True, exist_ok=True)
        (workdir / "appliance.conf").write_text(self.site())
        self.conf = workdir / "nginx.conf"
        self.conf.write_text(self.main_config())

    @property
    def https(self) -> str:
        return f"https://127.0.0.1:{self.https_port}"

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def site(self) -> str:
        text = SITE.read_text()
        http, https = self.http_port, self.https_port
        moves = {
            "listen 80 default_server;": f"listen 127.0.0.1:{http} default_server; "
                                         f"listen {HOTSPOT}:{http} default_server;",
            "listen [::]:80 default_server;": "",
            "listen 443 ssl http2 default_server;":
                f"listen 127.0.0.1:{https} ssl http2 default_server;",
            "listen [::]:443 ssl http2 default_server;": "",
            "server 127.0.0.1:8080;": f"server 127.0.0.1:{self.upstream_port};",
            "/data/tls/": f"{self.tls_dir}/",
            '"http 10.42.0.1"': f'"http {HOTSPOT}"',
            "error_log syslog:server=unix:/dev/log,tag=nginx warn;":
                f"error_log {self.workdir}/site-error.log warn;",
        }
        for old, new in moves.items():
            assert old in text, f"{SITE} no longer has {old!r}: update the test's moves"
            text = text.replace(old, new)
        return text

    def main_config(self) -> str:
        """What Debian's nginx.conf does around the site: an http block including it."""
        w = self.workdir
        temps = "\n".join(f"  {kind}_temp_path {w}/tmp-{kind};"
                          for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
        # Workers would run as nobody, who cannot read under pytest's 0700 tmp dirs.
        user = "user root;\n" if os.geteuid() == 0 else ""
        return (f"{user}daemon off;\nmaster_process on;\nworker_processes 1;\n"
                f"pid {w}/nginx.pid;\nerror_log {w}/error.log info;\n"
                "events { worker_connections 256; }\n"
                f"http {{\n{temps}\n  include {w}/appliance.conf;\n}}\n")

    def start(self, timeout: float = 10) -> None:
        nginx = require("nginx")
        test = subprocess.run([nginx, "-t", "-p", str(self.workdir), "-c", str(self.conf),
                               "-e", str(self.workdir / "error.log")],
                              capture_output=True, text=True, timeout=30, check=False)
        assert test.returncode == 0, test.stderr
        self.proc = spawn_nginx(self.workdir, self.conf, [self.http_port, self.https_port],
                                self.errors, timeout)

    def reload(self) -> None:
        """What `systemctl reload nginx` does (SIGHUP to the master)."""
        assert self.proc is not None and self.proc.poll() is None
        os.kill(self.proc.pid, signal.SIGHUP)

    def errors(self) -> str:
        logs = [self.workdir / n for n in ("error.log", "site-error.log", "stderr.log")]
        return "\n".join(p.read_text(errors="replace")[-3000:] for p in logs if p.exists())

    def stop(self) -> None:
        proc = self.proc
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@contextlib.contextmanager
def nginx_front(workdir: Path, upstream_port: int, tls_dir: Path) -> Iterator[Front]:
    front = Front(workdir, upstream_port, tls_dir)
    try:
        front.start()
        yield front
    finally:
        front.stop()


def daemon_config(tls_dir: Path) -> str:
    """A light daemon behind the front (trusting it by default: web.trusted_proxies)."""
    web = f'[web]\nlisten = "127.0.0.1:{{port}}"\ntls_dir = "{tls_dir}"\n'
    return web + LIGHT.replace("[video]\n", '[video]\nsource = "synthetic"\n', 1)
