"""A phone on the setup access point, run inside the guest by test_image_setup_ap.py (in the
network namespace that holds the second Wi-Fi radio): the image's own python3, stdlib only.

    python3 ap_client.py lease INTERFACE
    python3 ap_client.py setup ADDRESS NAME PASSWORD

`lease` asks the access point's DHCP server for an address (DISCOVER, OFFER, REQUEST, ACK;
RFC 2131) and prints {"address", "prefix", "router", "dns"}; the caller configures it.
`setup` asks the access point's DNS for NAME, makes a phone's connectivity check (GET
http://NAME/generate_204, redirects not followed), opens the setup page it is sent to, and
sets the admin password there. Each prints one JSON object with what it got.
"""

from __future__ import annotations

import http.client
import json
import random
import socket
import struct
import sys
from pathlib import Path


def resolve(server: str, name: str) -> list[str]:
    """The A records `server` gives for `name` (one UDP query, RFC 1035)."""
    ident = random.randrange(1 << 16)
    question = b"".join(bytes([len(p)]) + p.encode() for p in name.split(".")) + b"\0"
    query = struct.pack("!6H", ident, 0x0100, 1, 0, 0, 0) + question + struct.pack("!2H", 1, 1)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(5)
        s.sendto(query, (server, 53))
        reply = s.recv(4096)
    got, _flags, _qd, answers = struct.unpack("!4H", reply[:8])
    if got != ident:
        raise RuntimeError("DNS reply to another query")
    at = 12 + len(question) + 4
    addresses = []
    for _ in range(answers):
        if reply[at] & 0xC0 == 0xC0:  # a compressed name: a pointer
            at += 2
        else:
            while reply[at]:
                at += reply[at] + 1
            at += 1
        kind, _cls, _ttl, length = struct.unpack("!2HIH", reply[at:at + 10])
        at += 10
        if kind == 1 and length == 4:
            addresses.append(socket.inet_ntoa(reply[at:at + 4]))
        at += length
    return addresses


def request(address: str, method: str, path: str, host: str,
            body: dict[str, str] | None = None) -> dict[str, object]:
    conn = http.client.HTTPConnection(address, 80, timeout=30)
    data = json.dumps(body).encode() if body is not None else None
    headers = {"Host": host, **({"Content-Type": "application/json"} if data else {})}
    conn.request(method, path, body=data, headers=headers)
    r = conn.getresponse()
    text = r.read().decode(errors="replace")
    conn.close()
    return {"status": r.status, "location": r.getheader("Location"), "body": text[:300]}


_MAGIC = b"\x63\x82\x53\x63"


def _dhcp_message(kind: int, xid: int, mac: bytes, options: bytes = b"") -> bytes:
    # op=1 (request), htype=1 (Ethernet), hlen=6; flags: broadcast (no address to answer yet)
    head = struct.pack("!4BIHH4s4s4s4s16s64s128s", 1, 1, 6, 0, xid, 0, 0x8000, bytes(4),
                       bytes(4), bytes(4), bytes(4), mac.ljust(16, b"\0"), b"", b"")
    return head + _MAGIC + bytes([53, 1, kind]) + options + b"\xff"


def _dhcp_options(reply: bytes) -> dict[int, bytes]:
    options, at = {}, 240
    while at < len(reply) and reply[at] != 255:
        if reply[at] == 0:
            at += 1
            continue
        code, length = reply[at], reply[at + 1]
        options[code] = reply[at + 2:at + 2 + length]
        at += 2 + length
    return options


def lease(interface: str) -> dict[str, object]:
    mac = bytes.fromhex(Path(f"/sys/class/net/{interface}/address").read_text().strip()
                        .replace(":", ""))
    xid = random.randrange(1 << 32)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, interface.encode())
        s.bind(("0.0.0.0", 68))
        s.settimeout(10)

        def exchange(message: bytes, want: int) -> tuple[bytes, dict[int, bytes]]:
            s.sendto(message, ("255.255.255.255", 67))
            while True:
                reply = s.recv(2048)
                if reply[4:8] == struct.pack("!I", xid) and reply[236:240] == _MAGIC:
                    options = _dhcp_options(reply)
                    if options.get(53) == bytes([want]):
                        return reply, options

        offer, options = exchange(_dhcp_message(1, xid, mac), 2)  # DISCOVER -> OFFER
        address = offer[16:20]
        request_options = bytes([50, 4]) + address + bytes([54, 4]) + options[54]
        _ack, options = exchange(_dhcp_message(3, xid, mac, request_options), 5)  # -> ACK
    mask = int.from_bytes(options.get(1, bytes([255, 255, 255, 0])), "big")
    return {"address": socket.inet_ntoa(address), "prefix": bin(mask).count("1"),
            "router": socket.inet_ntoa(options[3][:4]) if 3 in options else None,
            "dns": socket.inet_ntoa(options[6][:4]) if 6 in options else None}


def setup(address: str, name: str, password: str) -> dict[str, object]:
    out: dict[str, object] = {"dns": resolve(address, name)}
    check = request(address, "GET", "/generate_204", name)
    out["check"] = check
    page = str(check["location"] or "")
    if page.startswith(f"http://{address}/"):
        out["page"] = request(address, "GET", page.removeprefix(f"http://{address}"), address)
    out["setup"] = request(address, "POST", "/api/v1/setup", address, {"password": password})
    return out


if __name__ == "__main__":
    if sys.argv[1] == "lease":
        print(json.dumps(lease(sys.argv[2])))
    else:
        print(json.dumps(setup(*sys.argv[2:5])))
