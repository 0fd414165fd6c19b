"""A stand-in for NetworkManager's nmcli with state: devices, connectivity, profiles.

NetworkManager cannot run here. This `nmcli` keeps what NetworkManager would know in a
JSON file (NMCLI_STATE) and answers the commands appliance.device.hotspot sends the way
nmcli 1.42 does: terse output with ':' escaped in values, exit status 10 and an
"Error: ..." line for an unknown or inactive connection, and the access point's device
connected by `connection up`. Each call is logged as a JSON line (NMCLI_LOG); a test
changes the network (a cable plugged in) by rewriting the state with `set_network`.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

SCRIPT = r'''#!{python}
import json, os, sys

state_path = os.environ["NMCLI_STATE"]
with open(state_path) as f:
    state = json.load(f)
args = sys.argv[1:]
record = {"argv": args}
if "passwd-file" in args:
    path = args[args.index("passwd-file") + 1]
    record["passwd_file"] = open(path).read()
    record["passwd_mode"] = oct(os.stat(path).st_mode & 0o777)
with open(os.environ["NMCLI_LOG"], "a") as f:
    f.write(json.dumps(record) + "\n")


def save():
    tmp = state_path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(state, f)
    os.replace(tmp, state_path)


def fail(message):
    sys.stderr.write("Error: " + message + "\n")
    sys.exit(10)


def esc(value):
    return value.replace("\\", "\\\\").replace(":", "\\:")


while args and args[0] == "--wait":
    args = args[2:]
if args[:1] == ["-t"] and args[-2:] == ["device", "status"]:
    for d in state["devices"]:
        print(":".join(esc(d[k]) for k in ("device", "type", "state", "connection")))
elif args == ["-t", "networking", "connectivity"]:
    print(state["connectivity"])
elif args[:2] == ["connection", "delete"]:
    if state["profiles"].pop(args[3], None) is None:
        fail("unknown connection '%s'." % args[3])
    save()
elif args[:2] == ["connection", "add"]:
    opts = dict(zip(args[2::2], args[3::2]))
    state["profiles"][opts["con-name"]] = opts
    save()
elif args[:2] == ["connection", "up"]:
    profile = state["profiles"].get(args[3])
    if profile is None:
        fail("unknown connection '%s'." % args[3])
    device = next((d for d in state["devices"] if d["device"] == profile["ifname"]), None)
    if device is None:
        fail("Connection activation failed: No suitable device found for this connection.")
    device.update(state="connected", connection=args[3])
    save()
elif args[:2] == ["connection", "down"]:
    device = next((d for d in state["devices"] if d["connection"] == args[3]), None)
    if device is None:
        fail("'%s' is not an active connection." % args[3])
    device.update(state="disconnected", connection="")
    save()
else:
    fail("stand-in nmcli: unexpected arguments %r" % (args,))
'''

OFFLINE: dict[str, Any] = {
    "connectivity": "none",
    "profiles": {},
    "devices": [
        {"device": "eth0", "type": "ethernet", "state": "unavailable", "connection": ""},
        {"device": "wlan0", "type": "wifi", "state": "disconnected", "connection": ""},
        {"device": "lo", "type": "loopback", "state": "connected (externally)",
         "connection": "lo"},
    ],
}


def install(tmp_path: Path, state: dict[str, Any] | None = None) -> dict[str, str]:
    """Writes the stand-in and its state under `tmp_path`; returns the environment
    (PATH first, NMCLI_STATE, NMCLI_LOG) that makes a process use it."""
    bin_dir = tmp_path / "nm-bin"
    bin_dir.mkdir(parents=True, exist_ok=True)
    exe = bin_dir / "nmcli"
    exe.write_text(SCRIPT.replace("{python}", sys.executable))
    exe.chmod(0o755)
    state_path = tmp_path / "nm-state.json"
    write_state(state_path, state if state is not None else OFFLINE)
    return {"PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
            "NMCLI_STATE": str(state_path), "NMCLI_LOG": str(tmp_path / "nmcli.log")}


def write_state(path: Path, state: dict[str, Any]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(state))
    os.replace(tmp, path)


def read_state(path: Path) -> dict[str, Any]:
    state: dict[str, Any] = json.loads(path.read_text())
    return state


def set_device(path: Path, device: str, state: str, connection: str = "",
               connectivity: str | None = None) -> None:
    """A device's state as NetworkManager would report it (e.g. a cable plugged in)."""
    current = read_state(path)
    for d in current["devices"]:
        if d["device"] == device:
            d.update(state=state, connection=connection)
    if connectivity is not None:
        current["connectivity"] = connectivity
    write_state(path, current)


def calls(log: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
