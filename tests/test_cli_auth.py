"""`appliance passwd` and `appliance token`, alone and beside a running daemon."""

from __future__ import annotations

import os
import pty
import select
import stat
import subprocess
import sys
import time
from pathlib import Path

from appliance.credentials import CredentialStore
from tests.api_client import LIGHT, Client, admin
from tests.daemon_proc import ROOT, running_daemon


def appliance(*args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "appliance", *args], input=stdin,
                          capture_output=True, text=True, cwd=ROOT, timeout=60)


def test_passwd_from_stdin(tmp_path: Path) -> None:
    r = appliance("passwd", "--stdin", "--state-dir", str(tmp_path), stdin="from stdin 123\n")
    assert r.returncode == 0, r.stderr
    store = CredentialStore(tmp_path)
    assert store.verify_password("from stdin 123")
    assert stat.S_IMODE(store.path.stat().st_mode) == 0o600
    assert "from stdin 123" not in store.path.read_text() + r.stdout + r.stderr
    # Not a terminal: stdin is read without --stdin too.
    assert appliance("passwd", "--state-dir", str(tmp_path), stdin="second one 456\n"
                     ).returncode == 0
    assert store.verify_password("second one 456")


def test_passwd_refuses_short_and_argv(tmp_path: Path) -> None:
    r = appliance("passwd", "--stdin", "--state-dir", str(tmp_path), stdin="short\n")
    assert r.returncode == 2 and "at least 10" in r.stderr
    r = appliance("passwd", "--state-dir", str(tmp_path), "a password in argv")
    assert r.returncode == 2  # no such argument: argv is readable by every user
    assert CredentialStore(tmp_path).setup_required()


def _passwd_on_a_tty(tmp_path: Path, first: str, second: str) -> tuple[int, str]:
    """Run `appliance passwd` on a pseudo-terminal, typing `first` then `second`."""
    pid, fd = pty.fork()
    if pid == 0:  # the child: becomes `appliance passwd` with the pty as its terminal
        os.chdir(ROOT)
        os.execv(sys.executable, [sys.executable, "-m", "appliance", "passwd",
                                  "--state-dir", str(tmp_path)])
    seen = b""

    def read_until(marker: bytes, timeout: float = 20) -> None:
        nonlocal seen
        deadline = time.monotonic() + timeout
        while marker not in seen:
            ready, _, _ = select.select([fd], [], [], max(0.0, deadline - time.monotonic()))
            assert ready, f"no {marker!r} in {seen!r}"
            seen += os.read(fd, 1024)

    read_until(b"password: ")
    os.write(fd, first.encode() + b"\n")
    read_until(b"Again: ")
    os.write(fd, second.encode() + b"\n")
    try:
        while chunk := os.read(fd, 1024):
            seen += chunk
    except OSError:  # EIO: the child closed the terminal
        pass
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status), seen.decode(errors="replace")


def test_passwd_on_a_terminal_asks_twice_without_echo(tmp_path: Path) -> None:
    code, screen = _passwd_on_a_tty(tmp_path, "typed on a tty 1", "typed on a tty 2")
    assert code == 2 and "differ" in screen
    assert CredentialStore(tmp_path).setup_required()
    code, screen = _passwd_on_a_tty(tmp_path, "typed on a tty 1", "typed on a tty 1")
    assert code == 0, screen
    assert "typed on a tty" not in screen  # no echo
    assert CredentialStore(tmp_path).verify_password("typed on a tty 1")


def test_token_create_list_revoke(tmp_path: Path) -> None:
    state = ["--state-dir", str(tmp_path)]
    made = appliance("token", "create", "backup-script", *state)
    assert made.returncode == 0, made.stderr
    token = made.stdout.strip()
    assert token.startswith("apl_") and "\n" not in token  # stdout is the token alone
    listed = appliance("token", "list", *state)
    assert "backup-script" in listed.stdout and token not in listed.stdout
    token_id = listed.stdout.split()[0]
    assert token not in (tmp_path / "secrets.json").read_text()
    assert appliance("token", "create", "bad/name", *state).returncode == 2
    assert appliance("token", "revoke", token_id, *state).returncode == 0
    assert appliance("token", "revoke", token_id, *state).returncode == 1
    assert "backup-script" not in appliance("token", "list", *state).stdout


def test_cli_changes_reach_the_running_daemon(tmp_path: Path) -> None:
    with running_daemon(tmp_path, extra=LIGHT) as d:
        state = ["--state-dir", str(tmp_path / "state")]
        page = admin(d)  # first-run setup through the API
        token = appliance("token", "create", "from-cli", *state).stdout.strip()
        assert Client(d.url, bearer=token).get("/api/v1/status").status == 200

        r = appliance("passwd", "--stdin", *state, stdin="changed by cli 1\n")
        assert r.returncode == 0
        assert page.get("/api/v1/status").status == 401  # the old session ended
        assert Client(d.url).login().status == 401
        assert Client(d.url).login("changed by cli 1").status == 200
        assert Client(d.url, bearer=token).get("/api/v1/status").status == 200
        assert "changed by cli 1" not in d.log() and token not in d.log()
