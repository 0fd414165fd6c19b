"""First boot: apply `appliance-setup.toml` from the boot selection partition.

The user writes the file on the card's small vfat partition (image/appliance-setup.toml
is the commented template); `appliance firstboot` (systemd/appliance-firstboot.service,
before networking) applies it:

  hostname        -> /data/etc/hostname (and the running kernel's)
  admin_password  -> the credential store in the state directory, hashed
  [wifi]          -> NetworkManager keyfiles (0600); country -> /data/etc/wifi-country
  [[uplink]]      -> /etc/appliance/appliance.toml, merged by name, schema-checked
  [fleet]         -> the same file's [fleet]; PEMs -> <state>/fleet/ (key 0600)
  [ssh]           -> /data/ssh/authorized_keys (added, never removed)

The whole file is checked first and nothing is written unless all of it is good; each
error names its key. Then the file is rewritten (atomically, fsynced) with its secrets
removed and what was applied kept as comments, and key files next to it are deleted:
the next boot finds nothing to apply, so it changes nothing (the password stays). The
outcome goes to <state>/firstboot.json, which the daemon shows in /api/v1/status.
Applying twice gives the same result, so a power cut before the rewrite is harmless.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import logging
import os
import re
import shutil
import socket
import ssl
import subprocess
import tempfile
import tomllib
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomli_w

from appliance.config.load import ConfigError, save_atomic, validate
from appliance.credentials import FILE_NAME as SECRETS_FILE
from appliance.credentials import CredentialStore
from appliance.provision.setup_file import SETUP_FILE, SetupFile, SetupFleet, WifiNetwork, parse
from appliance.web.masking import MASK, mask

log = logging.getLogger(__name__)

REPORT_FILE = "firstboot.json"
# Where things go, relative to --root (image/README.md has the /data layout).
STATE_DIR = Path("var/lib/appliance")
CONFIG_FILE = Path("etc/appliance/appliance.toml")
NM_CONNECTIONS = Path("etc/NetworkManager/system-connections")
HOSTNAME_FILE = Path("data/etc/hostname")
WIFI_COUNTRY_FILE = Path("data/etc/wifi-country")
AUTHORIZED_KEYS = Path("data/ssh/authorized_keys")
FLEET_DIR = "fleet"
_UUID_NAMESPACE = uuid.UUID("8f5c3c2e-3c5e-4d43-9b0c-6a1f0f1e5a10")  # this project's


# -- the plan: every file's new contents, made before anything is written ----------------------

@dataclass
class Write:
    path: Path
    text: str
    mode: int
    owner_of: Path | None = None  # take this directory's owner (files the daemon reads)


@dataclass
class Plan:
    writes: list[Write] = field(default_factory=list)
    password: str | None = None
    hostname: str | None = None
    country: str | None = None
    remove: list[Path] = field(default_factory=list)  # key files next to the setup file
    applied: list[str] = field(default_factory=list)
    saved: dict[str, str] = field(default_factory=dict)  # fleet PEM key -> device path


def _keyfile_value(value: str) -> str:
    """A GKeyFile string value: backslash and spaces escaped (no space is trimmed)."""
    return value.replace("\\", "\\\\").replace(" ", "\\s")


def wifi_keyfile(net: WifiNetwork) -> tuple[str, str]:
    """(file name, contents) of a NetworkManager keyfile for `net`."""
    slug = re.sub(r"[^A-Za-z0-9_-]", "_", net.ssid)[:24]
    ident = uuid.uuid5(_UUID_NAMESPACE, net.ssid)  # the same network keeps its file
    name = f"wifi-{slug}-{str(ident)[:8]}"
    lines = ["[connection]", f"id={name}", f"uuid={ident}", "type=wifi", "autoconnect=true",
             f"autoconnect-priority={net.priority}", "", "[wifi]", "mode=infrastructure",
             # As bytes ("72;111;...;"): any SSID, with nothing to escape.
             "ssid=" + "".join(f"{b};" for b in net.ssid.encode("utf-8"))]
    if net.hidden:
        lines.append("hidden=true")
    if net.psk is not None:
        lines += ["", "[wifi-security]", "key-mgmt=wpa-psk", f"psk={_keyfile_value(net.psk)}"]
    lines += ["", "[ipv4]", "method=auto", "", "[ipv6]", "addr-gen-mode=default",
              "method=auto", ""]
    return f"{name}.nmconnection", "\n".join(lines)


def _pem(fleet: SetupFleet, name: str, boot_dir: Path, errors: list[str]) -> str | None:
    inline, file_name = getattr(fleet, name), getattr(fleet, f"{name}_file")
    if file_name is None:
        return inline if isinstance(inline, str) else None
    try:
        return (boot_dir / file_name).read_text(encoding="ascii")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not PEM text"
        errors.append(f"fleet.{name}_file: cannot read {file_name}: {reason}")
        return None


def _reason(exc: Exception) -> str:
    """OpenSSL's words for what is wrong (never the PEM's contents), without the source
    location Python appends."""
    return re.sub(r"\s*\(_ssl\.c:\d+\)$", "", str(getattr(exc, "reason", None) or exc))


def _check_pems(ca: str | None, cert: str | None, key: str | None, errors: list[str]) -> None:
    """The CA loads, and the certificate and key load and belong together (OpenSSL's own
    checks, the ones the fleet agent's TLS connection will make)."""
    if ca is not None:
        try:
            ssl.create_default_context(cadata=ca)
        except (ssl.SSLError, ValueError) as exc:
            errors.append(f"fleet.ca: not a PEM CA certificate ({_reason(exc)})")
    if cert is None or key is None:
        return
    with tempfile.TemporaryDirectory(prefix="firstboot-") as tmp:  # 0700
        cert_path, key_path = Path(tmp, "cert.pem"), Path(tmp, "key.pem")
        cert_path.write_text(cert)
        fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(key)
        try:
            ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_cert_chain(cert_path, key_path)
        except ssl.SSLError as exc:
            # OpenSSL's reason names what is wrong, never the key's contents.
            errors.append(f"fleet.cert: certificate and key do not load together "
                          f"({_reason(exc)})")


def _merge_config(root: Path, setup: SetupFile, raw: dict[str, Any],
                  fleet_paths: dict[str, str], errors: list[str]) -> Write | None:
    """The device config with this file's uplinks (by name) and fleet merged in."""
    path = root / CONFIG_FILE
    data: dict[str, Any] = {}
    mode = 0o640
    if path.exists():
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
            mode = path.stat().st_mode & 0o777
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
            errors.append(f"/{CONFIG_FILE}: cannot merge into it: {exc}")
            return None
    if setup.uplink:
        uplinks = {u.get("name"): u for u in data.get("uplink", []) if isinstance(u, dict)}
        for u in raw["uplink"]:
            uplinks[u["name"]] = u
        data["uplink"] = list(uplinks.values())
    if setup.fleet is not None:
        credentials = ("ca_file", "cert_file", "key_file", "username", "password")
        old: dict[str, Any] = data["fleet"] if isinstance(data.get("fleet"), dict) else {}
        new = {k: v for k, v in raw["fleet"].items()
               if k not in ("ca", "cert", "key", "ca_file", "cert_file", "key_file")}
        data["fleet"] = {**{k: v for k, v in old.items() if k not in credentials},
                         **new, **fleet_paths}
    try:
        validate(data)
    except ConfigError as exc:
        errors += [f"{e} (merged into /{CONFIG_FILE})" for e in exc.errors]
        return None
    return Write(path, tomli_w.dumps(data), mode, owner_of=path.parent)


def _authorized_keys(root: Path, keys: list[str]) -> Write:
    path = root / AUTHORIZED_KEYS
    existing = path.read_text().splitlines() if path.exists() else []
    have = {tuple(line.split()[:2]) for line in existing if line.strip()}
    lines = existing + [k.strip() for k in keys if tuple(k.split()[:2]) not in have]
    return Write(path, "\n".join(lines) + "\n", 0o644)  # sshd reads it as the user


def make_plan(setup: SetupFile, raw: dict[str, Any], boot_dir: Path, root: Path) -> Plan:
    """Everything to write, or ConfigError with every problem found."""
    errors: list[str] = []
    plan = Plan(password=setup.admin_password, hostname=setup.hostname)
    state = root / STATE_DIR
    if setup.hostname is not None:
        plan.writes.append(Write(root / HOSTNAME_FILE, setup.hostname + "\n", 0o644))
        plan.applied.append(f"hostname {setup.hostname}")
    if setup.admin_password is not None:
        plan.applied.append("admin password")
    if setup.wifi is not None:
        for net in setup.wifi.network:
            name, text = wifi_keyfile(net)
            plan.writes.append(Write(root / NM_CONNECTIONS / name, text, 0o600))
        if setup.wifi.network:
            plan.applied.append("Wi-Fi " + ", ".join(repr(n.ssid) for n in setup.wifi.network))
        if setup.wifi.country is not None:
            plan.country = setup.wifi.country.upper()
            plan.writes.append(Write(root / WIFI_COUNTRY_FILE, plan.country + "\n", 0o644))
            plan.applied.append(f"Wi-Fi country {plan.country}")
    fleet_paths: dict[str, str] = {}
    if setup.fleet is not None:
        pems = {n: _pem(setup.fleet, n, boot_dir, errors) for n in ("ca", "cert", "key")}
        _check_pems(pems["ca"], pems["cert"], pems["key"], errors)
        for name, pem in pems.items():
            if pem is None:
                continue
            device_path = Path("/") / STATE_DIR / FLEET_DIR / f"{name}.pem"
            plan.writes.append(Write(state / FLEET_DIR / f"{name}.pem", pem,
                                     0o600 if name == "key" else 0o644, owner_of=state))
            fleet_paths[f"{name}_file"] = str(device_path)
            plan.saved[name] = str(device_path)
            file_name = getattr(setup.fleet, f"{name}_file")
            if name == "key" and file_name is not None:
                plan.remove.append(boot_dir / file_name)
        plan.applied.append(f"fleet {setup.fleet.broker} as {setup.fleet.device_id}")
    if setup.uplink or setup.fleet is not None:
        config = _merge_config(root, setup, raw, fleet_paths, errors)
        if config is not None:
            plan.writes.append(config)
    plan.applied += [f"uplink {u.name}" for u in setup.uplink]
    if setup.ssh is not None and setup.ssh.authorized_keys:
        plan.writes.append(_authorized_keys(root, setup.ssh.authorized_keys))
        plan.applied.append(f"{len(setup.ssh.authorized_keys)} SSH key(s)")
    if errors:
        raise ConfigError(errors)
    return plan


# -- applying ----------------------------------------------------------------------------------

def _own_like(path: Path, directory: Path) -> None:
    """Give a file root made the owner of `directory`: the daemon (user appliance) must
    read and replace what it finds in its state and config directories."""
    if os.geteuid() != 0 or not path.exists():
        return
    st = directory.stat()
    os.chown(path, st.st_uid, st.st_gid)


def _ensure_dir(directory: Path, owner_of: Path | None) -> None:
    if directory.is_dir():
        return
    directory.mkdir(parents=True, mode=0o700 if owner_of is not None else 0o755)
    if owner_of is not None and directory != owner_of:
        _own_like(directory, owner_of)


def apply(plan: Plan, root: Path) -> None:
    """Write the plan (OSError on a failure: the setup file stays, the next boot tries
    again; every step can be repeated)."""
    for w in plan.writes:
        _ensure_dir(w.path.parent, w.owner_of)
        save_atomic(w.path, w.text, w.mode)
        if w.owner_of is not None:
            _own_like(w.path, w.owner_of)
    if plan.password is not None:
        state = root / STATE_DIR
        state.mkdir(parents=True, exist_ok=True)
        CredentialStore(state).set_password(plan.password)
        for name in (SECRETS_FILE, f".{SECRETS_FILE}.lock"):
            _own_like(state / name, state)
    if root == Path("/"):  # the running system too, for this boot's DHCP, mDNS and radio
        if plan.hostname is not None:
            try:
                socket.sethostname(plan.hostname)
            except OSError as exc:
                log.warning("firstboot: hostname %s takes effect at the next boot (%s)",
                            plan.hostname, exc)
        iw = shutil.which("iw")
        if plan.country is not None and iw is not None:
            try:
                done = subprocess.run([iw, "reg", "set", plan.country], check=False,
                                      timeout=10, capture_output=True, text=True)
            except (OSError, subprocess.TimeoutExpired) as exc:
                log.warning("firstboot: iw reg set %s: %s", plan.country, exc)
            else:
                if done.returncode != 0:
                    log.warning("firstboot: iw reg set %s: %s", plan.country,
                                done.stderr.strip())


def scrubbed(text: str, setup: SetupFile, raw: dict[str, Any], plan: Plan,
             when: datetime.datetime) -> str:
    """The setup file after applying it: its settings kept as comments, secrets removed,
    PEMs replaced by where they were saved. Nothing in it is applied again."""
    record = mask(SetupFile, raw)
    for name, device_path in plan.saved.items():
        fleet = record["fleet"]
        if name in fleet:
            fleet[name] = f"(saved as {device_path})"
        elif name == "key":
            fleet["key_file"] = f"(moved to {device_path})"
    stamp = when.astimezone(datetime.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    head = [f"# {SETUP_FILE}: applied by `appliance firstboot` on {stamp}:",
            f"# {'; '.join(plan.applied)}.",
            "# Secrets were removed. What was set is kept below as comments; nothing here is",
            "# applied again. To change a setting, write it as a key again (the template is",
            "# image/appliance-setup.toml in the appliance's source) and restart the device.",
            "#"]
    # A masked secret is no TOML value: uncommenting its line cannot set "**********".
    body = ["# " + line.replace(f'"{MASK}"', "(removed)") if line else "#"
            for line in tomli_w.dumps(record).splitlines()]
    newline = "\r\n" if "\r\n" in text else "\n"  # as the user's editor wrote it
    return newline.join(head + body) + newline


def write_report(state_dir: Path, report: dict[str, Any]) -> None:
    state_dir.mkdir(parents=True, exist_ok=True)
    path = state_dir / REPORT_FILE
    save_atomic(path, json.dumps(report, indent=1) + "\n", 0o640)
    _own_like(path, state_dir)


def read_report(state_dir: Path) -> dict[str, Any] | None:
    """The last run's outcome (ok, time, file, applied, errors), for the status."""
    with contextlib.suppress(OSError, ValueError):
        report = json.loads((state_dir / REPORT_FILE).read_text(encoding="utf-8"))
        return report if isinstance(report, dict) else None
    return None


def run(boot_dir: Path, root: Path = Path("/"),
        now: datetime.datetime | None = None) -> int:
    """Apply <boot_dir>/appliance-setup.toml; 0 done or nothing to do, 2 the file is
    wrong (nothing applied), 1 applying failed."""
    when = now or datetime.datetime.now(datetime.UTC)
    path = boot_dir / SETUP_FILE
    state = root / STATE_DIR
    report: dict[str, Any] = {"time": when.isoformat(timespec="seconds"), "file": str(path)}
    try:
        text = path.read_bytes().decode("utf-8")  # line ends as written (CRLF kept)
    except FileNotFoundError:
        log.info("firstboot: no %s: nothing to apply", path)
        return 0
    except (OSError, UnicodeDecodeError) as exc:
        errors = [f"cannot read it: {getattr(exc, 'strerror', None) or 'not UTF-8 text'}"]
        return _failed(state, report, errors, 2)
    try:
        setup, raw = parse(text)
        plan = make_plan(setup, raw, boot_dir, root)
    except ConfigError as exc:
        return _failed(state, report, exc.errors, 2)
    if not plan.applied:  # e.g. the file as the last run left it
        log.info("firstboot: %s has nothing to apply", path)
        return 0
    try:
        apply(plan, root)
    except OSError as exc:
        return _failed(state, report, [f"applying it failed: {exc}"], 1)
    try:
        save_atomic(path, scrubbed(text, setup, raw, plan, when),
                    path.stat().st_mode & 0o777)  # vfat refuses any other mode
        for key_file in plan.remove:
            key_file.unlink(missing_ok=True)
    except OSError as exc:
        # Applied, but the secrets are still on the card: the next boot tries again.
        return _failed(state, {**report, "applied": plan.applied},
                       [f"applied, but the secrets could not be removed from it: {exc}"], 1)
    log.info("firstboot: applied %s: %s", path, "; ".join(plan.applied))
    write_report(state, {**report, "ok": True, "applied": plan.applied, "errors": []})
    return 0


def _failed(state: Path, report: dict[str, Any], errors: list[str], status: int) -> int:
    for err in errors:
        log.error("firstboot: %s: %s", report["file"], err)
    log.error("firstboot: the file is left as it is")
    try:
        write_report(state, {"applied": [], **report, "ok": False, "errors": errors})
    except OSError as exc:
        log.error("firstboot: cannot record the errors in %s: %s", state / REPORT_FILE, exc)
    return status
