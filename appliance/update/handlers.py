"""RAUC's system-side handlers ([handlers] in /etc/rauc/system.conf).

They run from the installed system, not from the bundle: a bundle's own hook could not be
trusted to refuse itself.

- pre-install (`appliance-rauc-pre-install`): refuses a bundle older than the running
  image. RAUC checks `compatible` itself; this checks it again so that a system.conf
  without one still cannot take another board's bundle.
- post-install (`appliance-rauc-post-install`): the boot slot just written carries the
  cmdline.txt of the image build (slot a's); this points it at its own system slot
  (`root=PARTLABEL=system_X rauc.slot=X`), through mtools on the unmounted partition.

The image's version is /usr/lib/appliance-version (image/build.sh writes it, and the
bundle's manifest `version` comes from the same value): dotted numbers, e.g. 1.4.0 or
2026.11.25.1. A bundle of the running version is taken (it repairs the other slot).
"""

from __future__ import annotations

import configparser
import os
import re
import sys
from collections.abc import Mapping
from pathlib import Path

from appliance.update.tryboot import BootError, MtoolsStore

VERSION_FILE = Path("/usr/lib/appliance-version")
_VERSION = re.compile(r"^[0-9]+(\.[0-9]+)*$")


class Refused(Exception):
    """The bundle may not be installed; the message says why."""


def parse_version(text: str) -> tuple[int, ...]:
    if not _VERSION.fullmatch(text):
        raise Refused(f"version {text!r} is not dotted numbers (like 1.4.0)")
    return tuple(int(p) for p in text.split("."))


def image_version(path: Path = VERSION_FILE) -> str | None:
    """The running image's version (None off the image)."""
    try:
        return path.read_text().strip() or None
    except OSError:
        return None


def system_compatible(env: Mapping[str, str]) -> str:
    """This system's compatible: from RAUC's environment where it passes it (newer
    RAUCs), else [system] compatible of the system.conf RAUC names (RAUC_SYSTEM_CONFIG)."""
    if env.get("RAUC_SYSTEM_COMPATIBLE"):
        return env["RAUC_SYSTEM_COMPATIBLE"]
    conf = configparser.ConfigParser(interpolation=None)
    conf.read(env.get("RAUC_SYSTEM_CONFIG", "/etc/rauc/system.conf"))
    return conf.get("system", "compatible", fallback="")


def check_bundle(env: Mapping[str, str], running: str | None) -> None:
    """Refused unless the bundle (RAUC_MF_*) is for this system and not older."""
    system, bundle = system_compatible(env), env.get("RAUC_MF_COMPATIBLE", "")
    if not system or bundle != system:
        raise Refused(f"bundle is for {bundle!r}, this system is {system!r}")
    if running is None:
        raise Refused(f"the running image has no version in {VERSION_FILE}")
    new = env.get("RAUC_MF_VERSION", "")
    if parse_version(new) < parse_version(running):
        raise Refused(f"bundle version {new} is older than the running {running}")


def slots(env: Mapping[str, str]) -> dict[str, dict[str, str]]:
    """RAUC's RAUC_SLOT_<FIELD>_<N> variables, by slot name: {class, device, bootname,
    parent, ...} (lower-case fields)."""
    out: dict[str, dict[str, str]] = {}
    for n in env.get("RAUC_SLOTS", "").split():
        fields = {k[len("RAUC_SLOT_"):-len(n) - 1].lower(): v for k, v in env.items()
                  if k.startswith("RAUC_SLOT_") and k.endswith(f"_{n}")}
        out[fields.get("name", n)] = {**fields, "index": n}
    return out


def fix_cmdline(text: str, bootname: str) -> str:
    """cmdline.txt naming system_<bootname> as root and <bootname> as the slot."""
    words = [w for w in text.split() if not w.startswith(("root=", "rauc.slot="))]
    return " ".join([f"root=PARTLABEL=system_{bootname}", f"rauc.slot={bootname}",
                     *words]) + "\n"


def fix_boot_slots(env: Mapping[str, str]) -> list[str]:
    """Rewrite cmdline.txt in every boot slot just written; returns their devices."""
    by_name = slots(env)
    by_index = {s["index"]: s for s in by_name.values()}
    done = []
    for n in env.get("RAUC_TARGET_SLOTS", "").split():
        slot = by_index.get(n)
        if slot is None or slot.get("class") != "boot":
            continue
        bootname = by_name.get(slot.get("parent", ""), {}).get("bootname")
        if not bootname:
            raise BootError(f"boot slot {slot.get('name')} has no parent with a bootname")
        store = MtoolsStore(slot["device"])
        text = store.read("cmdline.txt")
        if text is None:
            raise BootError(f"{slot['device']}: the new boot slot has no cmdline.txt")
        store.write("cmdline.txt", fix_cmdline(text, bootname))
        done.append(slot["device"])
    return done


def with_manifest(env: Mapping[str, str]) -> dict[str, str]:
    """`env` plus RAUC_MF_COMPATIBLE/RAUC_MF_VERSION read from the mounted bundle's
    manifest.raucm where RAUC did not pass them (RAUC 1.8 passes only the mount point)."""
    out = dict(env)
    manifest = Path(env.get("RAUC_BUNDLE_MOUNT_POINT", "")) / "manifest.raucm"
    if "RAUC_MF_COMPATIBLE" not in out and env.get("RAUC_BUNDLE_MOUNT_POINT"):
        conf = configparser.ConfigParser(interpolation=None)
        conf.read(manifest)
        out["RAUC_MF_COMPATIBLE"] = conf.get("update", "compatible", fallback="")
        out["RAUC_MF_VERSION"] = conf.get("update", "version", fallback="")
    return out


def pre_install() -> int:
    try:
        check_bundle(with_manifest(os.environ), image_version())
    except Refused as exc:
        print(f"update refused: {exc}", file=sys.stderr)
        return 1
    return 0


def post_install() -> int:
    try:
        for device in fix_boot_slots(os.environ):
            print(f"cmdline.txt of {device} points at its own system slot", file=sys.stderr)
    except BootError as exc:
        print(f"post-install: {exc}", file=sys.stderr)
        return 1
    return 0
