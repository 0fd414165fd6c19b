"""An RTMP / RTMPS publishing client over a plain socket, TLS by Python's ssl.

Why our own client rather than an ffmpeg child: ffmpeg takes the stream key only in
the URL on its command line, where `ps` shows it to every user. Here the key stays in
the process, and TLS is Python's: certificates verified against the system store (or
a configured CA file), with SNI.

What it does is what a publisher needs (Adobe RTMP 1.0 specification): the plain
handshake, connect / createStream / publish with AMF0 commands, then FLV tags from
libavformat's flv muxer sent as RTMP messages. A reader thread answers the server's
control messages (acknowledgements, pings) and notices when it hangs up.
"""

from __future__ import annotations

import contextlib
import os
import socket
import ssl
import struct
import threading
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from appliance.uplink import amf0

DEFAULT_PORTS = {"rtmp": 1935, "rtmps": 443}
HANDSHAKE_SIZE = 1536
OUT_CHUNK_SIZE = 4096
# The kernel's send buffer is a queue too, and an unbounded-looking one: autotuned up to
# tcp_wmem's 4 MB, i.e. ~10 s of a 3 Mbit/s stream going stale before a stalled origin
# blocks a send. Bounded to about a second of media, a stall blocks `send` promptly, the
# destination's own bounded queue then drops to the next keyframe (counted), and the
# send timeout notices the stall. 256 KiB still carries ~14 Mbit/s at 150 ms RTT.
SEND_BUFFER = 256 * 1024
# Message types (RTMP 1.0 §5.4, §7.1)
SET_CHUNK_SIZE, ABORT, ACK, USER_CONTROL, WINDOW_ACK_SIZE, SET_PEER_BANDWIDTH = 1, 2, 3, 4, 5, 6
AUDIO, VIDEO, DATA_AMF0, COMMAND_AMF3, COMMAND_AMF0 = 8, 9, 18, 17, 20
PING_REQUEST, PING_RESPONSE = 6, 7
# Chunk stream ids: protocol control, commands, then one per kind of media.
CS_CONTROL, CS_COMMAND, CS_AUDIO, CS_STREAM, CS_VIDEO = 2, 3, 4, 5, 6
_EXTENDED = 0xFFFFFF


class RtmpError(Exception):
    """`auth`: the origin refused the app or key; `tls`: the certificate was refused."""

    def __init__(self, message: str, auth: bool = False, tls: bool = False):
        super().__init__(message)
        self.auth = auth
        self.tls = tls


@dataclass
class _InStream:
    """Header state of one incoming chunk stream (chunks of fmt 1-3 reuse it)."""

    timestamp: int = 0
    delta: int = 0
    length: int = 0
    type_id: int = 0
    stream_id: int = 0
    extended: bool = False
    payload: bytearray = field(default_factory=bytearray)


def split_url(url: str) -> tuple[str, str, int, str, str]:
    """(scheme, host, port, app, tcUrl) of rtmp[s]://host[:port]/app[/instance]."""
    parts = urlsplit(url)
    if parts.scheme not in DEFAULT_PORTS or not parts.hostname:
        raise RtmpError(f"not an RTMP URL: {parts.scheme}://{parts.hostname or ''}")
    app = parts.path.strip("/")
    if not app:
        raise RtmpError("the RTMP URL names no application (rtmp://host/app)")
    port = parts.port or DEFAULT_PORTS[parts.scheme]
    tc_url = f"{parts.scheme}://{parts.netloc}/{app}"
    return parts.scheme, parts.hostname, port, app, tc_url


class RtmpPublisher:
    """Publish one stream; `send_flv` takes what the flv muxer writes."""

    def __init__(self, url: str, key: str, ca_file: str | None = None, timeout: float = 5.0):
        self.scheme, self.host, self.port, self.app, self.tc_url = split_url(url)
        self._key = key
        self.ca_file = ca_file
        self.timeout = timeout
        self._sock: socket.socket | None = None
        self._write_lock = threading.Lock()
        self._in: dict[int, _InStream] = {}
        self._in_chunk_size = 128
        self._received = 0
        self._acked = 0
        self._window = 2_500_000
        self._stream_id = 0
        self._flv = bytearray()
        self._flv_header_seen = False
        self._reader: threading.Thread | None = None
        self.closed_reason: str | None = None  # set by the reader when the server hangs up
        self.bytes_sent = 0

    # -- connecting ------------------------------------------------------------------

    def connect(self) -> None:
        raw = socket.create_connection((self.host, self.port), timeout=self.timeout)
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        raw.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SEND_BUFFER)
        try:
            self._sock = self._wrap_tls(raw) if self.scheme == "rtmps" else raw
            self._handshake()
            self._send(CS_CONTROL, SET_CHUNK_SIZE, 0, 0, struct.pack(">I", OUT_CHUNK_SIZE))
            self._command(0, "connect", 1, {
                "app": self.app, "type": "nonprivate", "tcUrl": self.tc_url,
                "flashVer": "FMLE/3.0 (compatible; appliance)",
            })
            self._expect_result(1, "connect")
            self._command(0, "releaseStream", 2, None, self._key)
            self._command(0, "FCPublish", 3, None, self._key)
            self._command(0, "createStream", 4, None)
            result = self._expect_result(4, "createStream")
            self._stream_id = int(result[3]) if len(result) > 3 and result[3] else 1
            self._command(self._stream_id, "publish", 5, None, self._key, "live")
            self._expect_publish_start()
        except BaseException:
            self.close()
            raise
        self._reader = threading.Thread(target=self._read_loop, name="rtmp-reader", daemon=True)
        self._reader.start()

    def _wrap_tls(self, raw: socket.socket) -> ssl.SSLSocket:
        ctx = ssl.create_default_context(cafile=self.ca_file)  # verifies, checks the name
        try:
            return ctx.wrap_socket(raw, server_hostname=self.host)
        except ssl.SSLCertVerificationError as exc:
            raw.close()
            raise RtmpError(f"TLS certificate of {self.host} refused: {exc.verify_message}",
                            tls=True) from None
        except (ssl.SSLError, OSError) as exc:
            raw.close()
            raise RtmpError(f"TLS with {self.host} failed: {exc}", tls=True) from None

    def _handshake(self) -> None:
        # The plain handshake (§5.2): C0 version 3, C1 time + zeros + random; echo S1.
        c1 = bytes(8) + os.urandom(HANDSHAKE_SIZE - 8)
        self._sendall(b"\x03" + c1)
        s0s1 = self._recv_exact(1 + HANDSHAKE_SIZE)
        if s0s1[0] != 3:
            raise RtmpError(f"the server speaks RTMP version {s0s1[0]}, not 3")
        self._sendall(s0s1[1:])
        self._recv_exact(HANDSHAKE_SIZE)  # S2: our C1 echoed; nothing to check in it

    def _command(self, stream_id: int, name: str, txn: int, *args: Any) -> None:
        cs = CS_COMMAND if stream_id == 0 else CS_STREAM
        self._send(cs, COMMAND_AMF0, stream_id, 0, amf0.encode(name, txn, *args))

    def _expect_result(self, txn: int, what: str) -> list[Any]:
        while True:
            values = self._next_command()
            if len(values) < 2 or values[1] != txn:
                continue
            if values[0] == "_result":
                return values
            info = values[3] if len(values) > 3 and isinstance(values[3], dict) else {}
            code = str(info.get("code", values[0]))
            raise RtmpError(f"{what} refused: {code} {info.get('description', '')}".strip(),
                            auth="Rejected" in code or "Unauthorized" in code)

    def _expect_publish_start(self) -> None:
        while True:
            try:
                values = self._next_command()
            except RtmpError as exc:
                # Origins refuse a wrong stream key by hanging up after `publish`.
                raise RtmpError(f"publish refused (the origin closed the connection; "
                                f"wrong stream key?): {exc}", auth=True) from None
            if values[0] != "onStatus" or len(values) < 4 or not isinstance(values[3], dict):
                continue
            info = values[3]
            code = str(info.get("code", ""))
            if code == "NetStream.Publish.Start":
                return
            if info.get("level") == "error" or "Publish" in code:
                description = str(info.get("description", ""))
                # "Already publishing": the origin still holds this key's previous
                # connection (a stall, a cable pulled) until it times it out. Not a
                # refused key: retry as for a network fault, not at the slow pace.
                stale = "already" in description.lower()
                raise RtmpError(f"publish refused: {code} {description}".strip()
                                + (" (the origin still has a stream with this key)"
                                   if stale else ""), auth=not stale)

    def _next_command(self) -> list[Any]:
        """Read messages, answering control ones, until an AMF command arrives."""
        while True:
            type_id, payload, _ = self._read_message()
            if type_id in (COMMAND_AMF0, COMMAND_AMF3):
                body = payload[1:] if type_id == COMMAND_AMF3 else payload
                try:
                    return amf0.decode(bytes(body))
                except amf0.AmfError:
                    continue

    # -- sending media ---------------------------------------------------------------

    def send_flv(self, data: bytes) -> None:
        """Send every complete FLV tag in `data` (plus what was left over before)."""
        if self.closed_reason is not None:
            raise RtmpError(self.closed_reason)
        self._flv += data
        if not self._flv_header_seen:
            if len(self._flv) < 13:
                return
            del self._flv[:13]  # "FLV" header (9 bytes) + PreviousTagSize0
            self._flv_header_seen = True
        while len(self._flv) >= 11:
            tag_type = self._flv[0]
            size = int.from_bytes(self._flv[1:4], "big")
            if len(self._flv) < 11 + size + 4:
                return
            ts = int.from_bytes(self._flv[4:7], "big") | self._flv[7] << 24
            body = bytes(self._flv[11:11 + size])
            del self._flv[:11 + size + 4]
            if tag_type == DATA_AMF0:
                # Metadata goes to the origin as @setDataFrame (what FMLE and OBS send).
                self._send(CS_STREAM, DATA_AMF0, self._stream_id, 0,
                           amf0.encode("@setDataFrame") + body)
            elif tag_type in (AUDIO, VIDEO):
                cs = CS_AUDIO if tag_type == AUDIO else CS_VIDEO
                self._send(cs, tag_type, self._stream_id, ts, body)

    def close(self) -> None:
        sock, self._sock = self._sock, None
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    # -- chunk layer -----------------------------------------------------------------

    def _send(self, cs: int, type_id: int, stream_id: int, timestamp: int,
              payload: bytes) -> None:
        ts = timestamp & 0xFFFFFFFF
        extended = ts >= _EXTENDED
        header = bytes([cs]) + struct.pack(
            ">I", (_EXTENDED if extended else ts))[1:] + struct.pack(
            ">I", len(payload))[1:] + bytes([type_id]) + struct.pack("<I", stream_id)
        ext = struct.pack(">I", ts) if extended else b""
        out = [header, ext]
        for i in range(0, max(len(payload), 1), OUT_CHUNK_SIZE):
            if i:
                out += [bytes([0xC0 | cs]), ext]  # fmt 3: continuation of this message
            out.append(payload[i:i + OUT_CHUNK_SIZE])
        data = b"".join(out)
        with self._write_lock:
            self._sendall(data)
        self.bytes_sent += len(data)

    def _sendall(self, data: bytes) -> None:
        if self._sock is None:
            raise RtmpError("not connected")
        try:
            self._sock.sendall(data)
        except TimeoutError:
            raise RtmpError(f"the origin took no data for {self.timeout:.0f} s") from None
        except OSError as exc:
            raise RtmpError(f"connection lost: {exc}") from None

    def _recv_exact(self, n: int) -> bytes:
        buf = bytearray()
        while len(buf) < n:
            if self._sock is None:
                raise RtmpError("not connected")
            try:
                chunk = self._sock.recv(n - len(buf))
            except TimeoutError:
                if self._reader is not None:
                    continue  # publishing: the origin has nothing to say, which is normal
                raise RtmpError("the origin did not answer in time") from None
            except OSError as exc:
                raise RtmpError(f"connection lost: {exc}") from None
            if not chunk:
                raise RtmpError("the origin closed the connection")
            buf += chunk
        self._received += n
        return bytes(buf)

    def _read_message(self) -> tuple[int, bytes, int]:
        """The next complete message (type, payload, stream id), control ones handled."""
        while True:
            first = self._recv_exact(1)[0]
            fmt, cs = first >> 6, first & 0x3F
            if cs == 0:
                cs = 64 + self._recv_exact(1)[0]
            elif cs == 1:
                lo, hi = self._recv_exact(2)
                cs = 64 + lo + hi * 256
            st = self._in.setdefault(cs, _InStream())
            if fmt <= 2:
                ts = int.from_bytes(self._recv_exact(3), "big")
                if fmt <= 1:
                    st.length = int.from_bytes(self._recv_exact(3), "big")
                    st.type_id = self._recv_exact(1)[0]
                if fmt == 0:
                    st.stream_id = struct.unpack("<I", self._recv_exact(4))[0]
                st.extended = ts == _EXTENDED
                if st.extended:
                    ts = struct.unpack(">I", self._recv_exact(4))[0]
                if fmt == 0:
                    st.timestamp = ts
                else:
                    st.delta = ts
                    st.timestamp += ts
            else:
                if st.extended:
                    self._recv_exact(4)
                if not st.payload:
                    st.timestamp += st.delta  # fmt 3 starting a new message
            need = min(self._in_chunk_size, st.length - len(st.payload))
            st.payload += self._recv_exact(need)
            self._maybe_ack()
            if len(st.payload) < st.length:
                continue
            payload, st.payload = bytes(st.payload), bytearray()
            if self._handle_control(st.type_id, payload):
                continue
            return st.type_id, payload, st.stream_id

    def _handle_control(self, type_id: int, payload: bytes) -> bool:
        if type_id == SET_CHUNK_SIZE and len(payload) >= 4:
            self._in_chunk_size = max(1, struct.unpack(">I", payload[:4])[0] & 0x7FFFFFFF)
        elif type_id == WINDOW_ACK_SIZE and len(payload) >= 4:
            self._window = max(1, struct.unpack(">I", payload[:4])[0])
        elif type_id == USER_CONTROL and len(payload) >= 6:
            if struct.unpack(">H", payload[:2])[0] == PING_REQUEST:
                self._send(CS_CONTROL, USER_CONTROL, 0, 0,
                           struct.pack(">H", PING_RESPONSE) + payload[2:6])
        elif type_id not in (ABORT, ACK, SET_PEER_BANDWIDTH):
            return False
        return True

    def _maybe_ack(self) -> None:
        if self._received - self._acked >= self._window:
            self._acked = self._received
            self._send(CS_CONTROL, ACK, 0, 0, struct.pack(">I", self._received & 0xFFFFFFFF))

    def _read_loop(self) -> None:
        """After publish: keep reading so acks and pings are answered and a hang-up seen."""
        while self._sock is not None:
            try:
                type_id, payload, _ = self._read_message()
            except RtmpError as exc:
                self.closed_reason = str(exc)
                return
            if type_id == COMMAND_AMF0:
                try:
                    values = amf0.decode(payload)
                except amf0.AmfError:
                    continue
                info = values[3] if len(values) > 3 and isinstance(values[3], dict) else {}
                if info.get("level") == "error":
                    self.closed_reason = f"origin: {info.get('code')} {info.get('description', '')}"
