"""A phone on the setup access point, run inside the guest by test_image_setup_ap.py (in the
network namespace that holds the second Wi-Fi radio): the image's own python3, stdlib only.

    python3 ap_client.py ADDRESS NAME PASSWORD

asks the access point's DNS for NAME, makes a phone's connectivity check (GET
http://NAME/generate_204, redirects not followed), opens the setup page it is sent to, and
sets the admin password there. Prints one JSON object with what each step got.
"""

from __future__ import annotations

import http.client
import json
import random
import socket
import struct
import sys


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


def main() -> None:
    address, name, password = sys.argv[1:4]
    out: dict[str, object] = {"dns": resolve(address, name)}
    check = request(address, "GET", "/generate_204", name)
    out["check"] = check
    page = str(check["location"] or "")
    if page.startswith(f"http://{address}/"):
        out["page"] = request(address, "GET", page.removeprefix(f"http://{address}"), address)
    out["setup"] = request(address, "POST", "/api/v1/setup", address, {"password": password})
    print(json.dumps(out))


if __name__ == "__main__":
    main()
