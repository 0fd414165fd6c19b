"""The ci-amd64 image boots in QEMU (software emulation) as a user would use it: a card
with a first-boot file, the appliance live under systemd on the synthetic source, the page
behind nginx, root read-only, nothing written outside /data and the boot selection."""

from __future__ import annotations

import hashlib
import json
import secrets
import socket
import ssl
import sys
import urllib.request

import pytest

from tests.api_client import Client
from tests.image.conftest import ADMIN_PASSWORD, HOSTNAME, Device
from tests.image.firmware import Card

# Software emulation: a boot takes about a minute, an install a few (pyproject's 300 s
# timeout is for ordinary tests).
pytestmark = pytest.mark.timeout(1800)


def partition_hash(card: Card, label: str) -> str:
    digest = hashlib.sha256()
    with card.path.open("rb") as f:
        f.seek(card.partition(label).offset)
        left = card.partition(label).size
        while left:
            chunk = f.read(min(left, 1 << 22))
            digest.update(chunk)
            left -= len(chunk)
    return digest.hexdigest()


def tls_client(alpn: tuple[str, ...] = ("http/1.1",)) -> ssl.SSLContext:
    # The device's certificate is self-signed, made at its first boot: the test reads its
    # names rather than trusting it.
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.set_alpn_protocols(list(alpn))
    return ctx


def test_first_boot_to_live(device: Device) -> None:
    print(f"\nci-amd64 in QEMU (TCG), first boot: power on to /healthz {device.live_after:.1f} s",
          file=sys.stderr)
    with urllib.request.urlopen(device.fw.url("/live/index.m3u8"), timeout=30) as r:
        assert r.status == 200 and b"#EXTM3U" in r.read()
    for unit in ("appliance", "nginx", "ssh", "avahi-daemon", "NetworkManager"):
        assert device.sh(f"systemctl is-active {unit}").strip() == "active", unit
    # The health checks passed and the slot was marked good; nothing failed on the way.
    device.wait_committed()
    assert device.sh("systemctl --failed --no-legend --plain").strip() == ""


def test_first_boot_file_applied_and_scrubbed(device: Device) -> None:
    assert device.sh("hostname").strip() == HOSTNAME
    report = json.loads(device.sh("cat /var/lib/appliance/firstboot.json"))
    assert report["ok"] and not report["errors"], report
    # The password from the file works on the page's API, through nginx over HTTPS.
    c = Client(f"https://127.0.0.1:{device.fw.ports[443]}", context=tls_client())
    assert c.login("wrong password here").status == 401
    assert c.login(ADMIN_PASSWORD).status == 200
    status = c.get("/api/v1/status")
    assert status.status == 200
    # On the image the setup access point comes up by itself after 60 s without a network;
    # online through the Ethernet (a device NetworkManager connected) it stays down.
    hotspot = status.json()["sections"]["hotspot"]
    assert hotspot["auto_start_s"] == 60 and hotspot["online"], hotspot
    assert not hotspot["active"], hotspot
    scrubbed = device.sh("cat /boot/select/appliance-setup.toml")
    assert ADMIN_PASSWORD not in scrubbed and "applied" in scrubbed


def test_https_front_with_http2_and_the_devices_certificate(device: Device) -> None:
    with socket.create_connection(("127.0.0.1", device.fw.ports[443]), timeout=10) as raw, \
            tls_client(("h2", "http/1.1")).wrap_socket(raw) as tls:
        assert tls.selected_alpn_protocol() == "h2"
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    pem = ssl.DER_cert_to_PEM_cert(der)
    names = device.sh(f"printf '%s' '{pem}' | openssl x509 -noout -ext subjectAltName")
    assert f"DNS:{HOSTNAME}" in names and f"DNS:{HOSTNAME}.local" in names


def test_earlier_boots_journals_are_capped(device: Device) -> None:
    # Each boot has its own machine ID (an empty /etc/machine-id on the read-only root), so
    # its own journal directory, which journald's cap does not cover. Three earlier boots
    # of 30 MB each, days apart: the newest two fit in the 64 MB left to earlier boots.
    ids = [secrets.token_hex(16) for _ in range(3)]
    for days, machine in zip((3, 2, 1), ids, strict=True):
        d = f"/var/log/journal/{machine}"
        device.sh(f"mkdir {d} && fallocate -l 30M {d}/system.journal && "
                  f"touch -d '-{days} days' {d}")
    current = device.sh("cat /etc/machine-id").strip()
    assert device.sh("systemctl is-enabled appliance-journal-trim.service").strip() == "enabled"
    device.sh("systemctl start appliance-journal-trim.service")
    left = set(device.sh("ls /var/log/journal").split())
    assert {current, ids[1], ids[2]} <= left and ids[0] not in left, left
    assert f"removing the journal of an earlier boot: {ids[0]}" in device.sh(
        "journalctl -b -u appliance-journal-trim.service --no-pager")


def test_the_daemons_user_may_change_network_manager_connections(device: Device) -> None:
    # The setup access point (appliance/device/hotspot.py) adds and deletes its connection
    # through nmcli as the service's user, without a login session: polkit lets it
    # (image/rootfs/etc/polkit-1/rules.d). Run the same way, outside any session.
    as_daemon = "systemd-run --quiet --wait --pipe --uid=appliance nmcli"
    device.sh(f"{as_daemon} connection add type wifi ifname wlan9 con-name appliance-probe "
              "autoconnect no ssid probe")
    assert "appliance-probe" in device.sh("nmcli -t -f NAME connection show")
    device.sh(f"{as_daemon} connection delete id appliance-probe")
    # Anyone else is still asked for the admin password, which a service cannot give.
    with pytest.raises(RuntimeError, match="Not authorized|Insufficient privileges"):
        device.sh("systemd-run --quiet --wait --pipe --uid=nobody nmcli connection add "
                  "type wifi ifname wlan9 con-name nobody-probe autoconnect no ssid probe")


def test_read_only_root_and_data(device: Device) -> None:
    assert "ro" in device.sh("findmnt -no OPTIONS /").strip().split(",")
    assert device.sh("findmnt -no FSTYPE /var").strip() == "tmpfs"
    assert device.sh("findmnt -no FSTYPE /data").strip() == "ext4"
    # The data partition grew to the end of the (larger) card on the first boot.
    assert int(device.sh("blockdev --getsize64 /dev/disk/by-partlabel/data")) > 1 << 30
    # The journal persists on /data, capped.
    # (a bind mount: findmnt names the data partition and the folder, e.g. /dev/vda6[/journal])
    journal = device.sh("findmnt -no SOURCE /var/log/journal").strip()
    assert journal.endswith("[/journal]") and journal.startswith(
        device.sh("findmnt -no SOURCE /data").strip()), journal
    assert device.sh("ls /data/journal/*/system.journal").strip()
    # Nothing is written to the root filesystem: the booted slot is still byte for byte
    # the image both slots were made from (slot b is untouched until an update).
    device.sh("sync")
    assert partition_hash(device.card, "system_a") == partition_hash(device.card, "system_b")
