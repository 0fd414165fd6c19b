"""Installs a bundle: received from the web page or downloaded for the fleet, then given to
RAUC, then the reboot into the new slot's trial boot.

The daemon runs unprivileged; RAUC's service (root, on the system D-Bus) does the install.
`rauc install BUNDLE` is its D-Bus client: it calls Installer.InstallBundle and prints the
progress ("40% Verifying signature done.") and the outcome ("LastError: ...") that land
here in the hub's `update` section. Who may call RAUC is the D-Bus policy's business
(image/rootfs/etc/dbus-1/system.d/appliance-rauc.conf: root and the appliance user). RAUC
checks the signature (keyring), compatible and version (handlers.py) itself, so nothing
here decides whether a bundle is acceptable, except the download's sha256.

The reboot needs root too: the daemon creates `<update dir>/reboot-requested`, which
appliance-update-reboot.path watches; its service runs `appliance-boot-backend reboot`
(a trial boot of the new slot). Hub section `update`: state (idle, downloading,
installing, rebooting, failed), percent, message, version (of the running image), slot
(the booted one).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import re
import shlex
import ssl
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, Literal

import aiohttp

from appliance.status import StatusHub
from appliance.update.handlers import Refused, check_bundle, image_version
from appliance.update.tryboot import booted_slot

log = logging.getLogger(__name__)

State = Literal["idle", "downloading", "installing", "rebooting", "failed"]
BUSY: frozenset[State] = frozenset({"downloading", "installing", "rebooting"})
REBOOT_REQUEST = "reboot-requested"
BUNDLE_NAME = "incoming.raucb"
MAX_BUNDLE = 4 << 30  # larger than any image of ours; stops a runaway upload
CHUNK = 1 << 20
DOWNLOAD_TIMEOUT_S = 3600.0
_PROGRESS = re.compile(r"^\s*(\d{1,3})% (.*)$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


class UpdateError(Exception):
    """The update could not be done; the message says why (also in the hub)."""


class Busy(UpdateError):
    """Another update is under way."""


def update_dir(state_dir: Path) -> Path:
    """Where bundles are received: $APPLIANCE_UPDATE_DIR, else <state dir>/update (on the
    device /var/lib/appliance/update, which is /data/state/update)."""
    return Path(os.environ.get("APPLIANCE_UPDATE_DIR") or state_dir / "update")


class Updater:
    def __init__(self, hub: StatusHub, directory: Path, rauc: str = "rauc",
                 ssl_context: ssl.SSLContext | None = None) -> None:
        """`rauc`: the rauc binary (its D-Bus client); `ssl_context`: what downloads trust
        (default: the system's CAs, certificates and host names verified)."""
        self.hub, self.dir, self.rauc = hub, directory.absolute(), rauc
        self.ssl = ssl_context or ssl.create_default_context()
        self._lock = asyncio.Lock()
        self._tasks: set[asyncio.Task[None]] = set()
        self._state: State = "idle"
        self._publish("idle", 0, "", version=image_version(), slot=booted_slot())

    @property
    def state(self) -> State:
        return self._state

    def _publish(self, state: State, percent: int, message: str, **extra: Any) -> None:
        self._state = state
        self.hub.update("update", state=state, percent=percent, message=message, **extra)

    def _claim(self) -> None:
        if self._lock.locked() or self._state in BUSY:
            raise Busy(f"an update is under way ({self._state})")

    # -- getting the bundle --------------------------------------------------------------

    async def _receive(self, chunks: AsyncIterator[bytes], size: int | None, what: str,
                       sha256: str | None = None) -> Path:
        self.dir.mkdir(parents=True, exist_ok=True)
        path, part = self.dir / BUNDLE_NAME, self.dir / (BUNDLE_NAME + ".part")
        digest, done, shown = hashlib.sha256(), 0, -1
        self._publish("downloading", 0, what)
        try:
            with await asyncio.to_thread(open, part, "wb") as f:
                async for chunk in chunks:
                    done += len(chunk)
                    if done > MAX_BUNDLE:
                        raise UpdateError(f"bundle larger than {MAX_BUNDLE >> 20} MiB")
                    digest.update(chunk)
                    await asyncio.to_thread(f.write, chunk)
                    percent = min(99, done * 100 // size) if size else 0
                    if percent != shown:
                        shown = percent
                        self._publish("downloading", percent, what)
            if done == 0:
                raise UpdateError("the bundle is empty")
            if sha256 is not None and digest.hexdigest() != sha256:
                raise UpdateError(f"sha256 mismatch: got {digest.hexdigest()}, "
                                  f"expected {sha256}")
            os.replace(part, path)
        except BaseException:
            part.unlink(missing_ok=True)
            raise
        log.info("update: %s: %d bytes received", what, done)
        return path

    async def receive_upload(self, chunks: AsyncIterator[bytes], size: int | None) -> Path:
        """Store an uploaded bundle (the web page); Busy if an update is under way."""
        self._claim()
        async with self._lock:
            try:
                return await self._receive(chunks, size, "receiving the upload")
            except (UpdateError, OSError) as exc:
                self._fail(exc)
                raise UpdateError(str(exc)) from exc
            except BaseException:  # the client went away mid-upload, or shutdown
                self._fail(UpdateError("the upload was interrupted"))
                raise

    async def download(self, url: str, sha256: str) -> Path:
        """Fetch a bundle over HTTPS (certificate verified) and check its sha256."""
        self._claim()
        if not url.startswith("https://"):
            raise UpdateError("the bundle URL must be https://")
        if not _SHA256.fullmatch(sha256):
            raise UpdateError("sha256 must be 64 lower-case hex digits")
        async with self._lock:
            try:
                timeout = aiohttp.ClientTimeout(total=DOWNLOAD_TIMEOUT_S, sock_read=60)
                async with aiohttp.ClientSession(timeout=timeout) as session, \
                        session.get(url, ssl=self.ssl) as resp:
                    if resp.status != 200:
                        raise UpdateError(f"download: HTTP {resp.status} from the server")
                    return await self._receive(resp.content.iter_chunked(CHUNK),
                                               resp.content_length, "downloading", sha256)
            except (UpdateError, OSError, aiohttp.ClientError, TimeoutError) as exc:
                message = str(exc) if isinstance(exc, UpdateError) else f"download: {exc!r}"
                self._fail(UpdateError(message))
                raise UpdateError(message) from exc
            except BaseException:
                self._fail(UpdateError("the download was interrupted"))
                raise

    # -- installing ----------------------------------------------------------------------

    async def _precheck(self, bundle: Path) -> None:
        """On the image, the pre-install handler's verdict before RAUC is asked: RAUC
        reports a handler's refusal only as "Pre-install handler error", so the page and
        the fleet would not learn that the bundle is older or for another board. RAUC and
        its handler still decide; this only words the refusal."""
        running = image_version()
        if running is None:  # not on the image (a dev machine): nothing to compare with
            return
        proc = await asyncio.create_subprocess_exec(
            self.rauc, "info", "--output-format=shell", str(bundle),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        out, err = await proc.communicate()
        if proc.returncode != 0:
            lines = err.decode(errors="replace").strip().splitlines() or ["rauc info failed"]
            raise UpdateError(f"bundle refused: {lines[-1]}")
        env = {k: v for k, _, v in (w.partition("=") for w in shlex.split(out.decode()))}
        try:
            check_bundle(env, running)
        except Refused as exc:
            raise UpdateError(f"bundle refused: {exc}") from None

    async def install(self, bundle: Path) -> dict[str, Any]:
        """Install with RAUC, then ask for the reboot; UpdateError with RAUC's own reason."""
        async with self._lock:
            self._publish("installing", 0, "checking the bundle")
            try:
                await self._precheck(bundle)
            except (UpdateError, OSError) as exc:
                await asyncio.to_thread(bundle.unlink, missing_ok=True)
                self._fail(exc)
                raise UpdateError(str(exc)) from None
            lines: list[str] = []
            try:
                proc = await asyncio.create_subprocess_exec(
                    self.rauc, "install", str(bundle),
                    stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
                assert proc.stdout is not None
                async for raw in proc.stdout:
                    line = raw.decode(errors="replace").rstrip()
                    lines = [*lines[-19:], line]
                    if m := _PROGRESS.match(line):
                        self._publish("installing", min(100, int(m.group(1))), m.group(2))
                code = await proc.wait()
            except OSError as exc:
                code, lines = -1, [f"cannot run {self.rauc}: {exc}"]
            finally:
                await asyncio.to_thread(bundle.unlink, missing_ok=True)
            if code != 0:
                reason = next((ln.removeprefix("LastError: ") for ln in reversed(lines)
                               if ln.startswith("LastError: ")), lines[-1] if lines else "")
                self._fail(UpdateError(f"install failed: {reason}"))
                raise UpdateError(f"install failed: {reason}")
            self._publish("rebooting", 100, "installed: rebooting into the new version")
            await asyncio.to_thread((self.dir / REBOOT_REQUEST).touch)
            log.warning("update: installed; reboot requested")
            return {"installed": True, "rebooting": True}

    def install_soon(self, bundle: Path) -> None:
        """Install in the background (the web upload answers at once; the page follows
        the hub's `update` section)."""

        async def run() -> None:
            with contextlib.suppress(UpdateError):
                await self.install(bundle)

        task = asyncio.get_running_loop().create_task(run(), name="update-install")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def download_and_install(self, url: str, sha256: str) -> dict[str, Any]:
        """The fleet's `update` command: the reply comes once RAUC is done."""
        return await self.install(await self.download(url, sha256))

    def _fail(self, exc: BaseException) -> None:
        log.error("update failed: %s", exc)
        self._publish("failed", 0, str(exc))
