"""SRT sockets through libsrt (ctypes), in the daemon's process.

Why not a srt-live-transmit or ffmpeg child: both take the passphrase only inside the
URL on their command line, where `ps` shows it to every user. libsrt itself takes it
as a socket option, and gives the sender's statistics (RTT, loss, retransmits, drops)
directly instead of through a child's text reports. ctypes releases the GIL around
each call, so a blocking connect or send holds only its own uplink thread.

The library is Debian's / Raspberry Pi OS's libsrt 1.5 (the GnuTLS flavour comes with
ffmpeg and srt-tools, the OpenSSL flavour with libsrt-openssl-dev); it is loaded on
first use, so this module imports anywhere.
"""

from __future__ import annotations

import ctypes
import socket
import threading
import time
from dataclasses import dataclass
from typing import Literal

_LIBRARIES = ("libsrt-gnutls.so.1.5", "libsrt.so.1.5", "libsrt-openssl.so.1.5")

# enum SRT_SOCKOPT (srt.h, 1.5)
SRTO_SNDSYN = 1
SRTO_SNDTIMEO = 13
SRTO_SENDER = 21
SRTO_LATENCY = 23
SRTO_PASSPHRASE = 26
SRTO_CONNTIMEO = 36
SRTO_STREAMID = 46
SRTO_TRANSTYPE = 50
SRTO_ENFORCEDENCRYPTION = 53
SRTO_PEERIDLETIMEO = 55
SRTT_LIVE = 0
# enum SRT_SOCKSTATUS
SRTS_CONNECTED = 5
# enum SRT_REJECT_REASON: a wrong or missing passphrase on either side
SRT_REJ_BADSECRET = 10
SRT_REJ_UNSECURE = 11
# SRT_ETIMEOUT (MJ_AGAIN * 1000 + MN_XMTIMEOUT): a send that did not fit in SNDTIMEO
SRT_ETIMEOUT = 6003

PEER_IDLE_MS = 2000
# libsrt declares a silent peer broken only after 16 expiry periods of at least 300 ms,
# about 5 s whatever SRTO_PEERIDLETIMEO says (measured: a receiver killed with SIGKILL was
# noticed 5.1 s later). A live receiver acknowledges every 10 ms, so the sender watches
# the acknowledgements itself: data sent and nothing acknowledged for this long (or for
# the latency plus a second, when that is longer: what SRT could still repair) means the
# receiver is gone.
ACK_SILENCE_S = 1.5
ACK_CHECK_EVERY_S = 0.1
# An SRT live payload carries at most 1316 bytes: seven 188-byte MPEG-TS packets.
TS_PAYLOAD = 1316


class SrtError(Exception):
    """A libsrt call failed; `auth` tells a passphrase mismatch from other faults."""

    def __init__(self, message: str, auth: bool = False, timeout: bool = False):
        super().__init__(message)
        self.auth = auth
        self.timeout = timeout


class _Stats(ctypes.Structure):
    """struct CBytePerfMon of srt.h 1.5, field for field (libsrt fills all of it)."""

    _fields_ = [
        ("msTimeStamp", ctypes.c_int64),
        ("pktSentTotal", ctypes.c_int64),
        ("pktRecvTotal", ctypes.c_int64),
        ("pktSndLossTotal", ctypes.c_int),
        ("pktRcvLossTotal", ctypes.c_int),
        ("pktRetransTotal", ctypes.c_int),
        ("pktSentACKTotal", ctypes.c_int),
        ("pktRecvACKTotal", ctypes.c_int),
        ("pktSentNAKTotal", ctypes.c_int),
        ("pktRecvNAKTotal", ctypes.c_int),
        ("usSndDurationTotal", ctypes.c_int64),
        ("pktSndDropTotal", ctypes.c_int),
        ("pktRcvDropTotal", ctypes.c_int),
        ("pktRcvUndecryptTotal", ctypes.c_int),
        ("byteSentTotal", ctypes.c_uint64),
        ("byteRecvTotal", ctypes.c_uint64),
        ("byteRcvLossTotal", ctypes.c_uint64),
        ("byteRetransTotal", ctypes.c_uint64),
        ("byteSndDropTotal", ctypes.c_uint64),
        ("byteRcvDropTotal", ctypes.c_uint64),
        ("byteRcvUndecryptTotal", ctypes.c_uint64),
        ("pktSent", ctypes.c_int64),
        ("pktRecv", ctypes.c_int64),
        ("pktSndLoss", ctypes.c_int),
        ("pktRcvLoss", ctypes.c_int),
        ("pktRetrans", ctypes.c_int),
        ("pktRcvRetrans", ctypes.c_int),
        ("pktSentACK", ctypes.c_int),
        ("pktRecvACK", ctypes.c_int),
        ("pktSentNAK", ctypes.c_int),
        ("pktRecvNAK", ctypes.c_int),
        ("mbpsSendRate", ctypes.c_double),
        ("mbpsRecvRate", ctypes.c_double),
        ("usSndDuration", ctypes.c_int64),
        ("pktReorderDistance", ctypes.c_int),
        ("pktRcvAvgBelatedTime", ctypes.c_double),
        ("pktRcvBelated", ctypes.c_int64),
        ("pktSndDrop", ctypes.c_int),
        ("pktRcvDrop", ctypes.c_int),
        ("pktRcvUndecrypt", ctypes.c_int),
        ("byteSent", ctypes.c_uint64),
        ("byteRecv", ctypes.c_uint64),
        ("byteRcvLoss", ctypes.c_uint64),
        ("byteRetrans", ctypes.c_uint64),
        ("byteSndDrop", ctypes.c_uint64),
        ("byteRcvDrop", ctypes.c_uint64),
        ("byteRcvUndecrypt", ctypes.c_uint64),
        ("usPktSndPeriod", ctypes.c_double),
        ("pktFlowWindow", ctypes.c_int),
        ("pktCongestionWindow", ctypes.c_int),
        ("pktFlightSize", ctypes.c_int),
        ("msRTT", ctypes.c_double),
        ("mbpsBandwidth", ctypes.c_double),
        ("byteAvailSndBuf", ctypes.c_int),
        ("byteAvailRcvBuf", ctypes.c_int),
        ("mbpsMaxBW", ctypes.c_double),
        ("byteMSS", ctypes.c_int),
        ("pktSndBuf", ctypes.c_int),
        ("byteSndBuf", ctypes.c_int),
        ("msSndBuf", ctypes.c_int),
        ("msSndTsbPdDelay", ctypes.c_int),
        ("pktRcvBuf", ctypes.c_int),
        ("byteRcvBuf", ctypes.c_int),
        ("msRcvBuf", ctypes.c_int),
        ("msRcvTsbPdDelay", ctypes.c_int),
        ("pktSndFilterExtraTotal", ctypes.c_int),
        ("pktRcvFilterExtraTotal", ctypes.c_int),
        ("pktRcvFilterSupplyTotal", ctypes.c_int),
        ("pktRcvFilterLossTotal", ctypes.c_int),
        ("pktSndFilterExtra", ctypes.c_int),
        ("pktRcvFilterExtra", ctypes.c_int),
        ("pktRcvFilterSupply", ctypes.c_int),
        ("pktRcvFilterLoss", ctypes.c_int),
        ("pktReorderTolerance", ctypes.c_int),
        ("pktSentUniqueTotal", ctypes.c_int64),
        ("pktRecvUniqueTotal", ctypes.c_int64),
        ("byteSentUniqueTotal", ctypes.c_uint64),
        ("byteRecvUniqueTotal", ctypes.c_uint64),
        ("pktSentUnique", ctypes.c_int64),
        ("pktRecvUnique", ctypes.c_int64),
        ("byteSentUnique", ctypes.c_uint64),
        ("byteRecvUnique", ctypes.c_uint64),
    ]


@dataclass(frozen=True, slots=True)
class SenderStats:
    """What the status hub shows for an SRT sender (totals since connect)."""

    rtt_ms: float
    send_mbps: float
    bandwidth_mbps: float
    packets_sent: int
    bytes_sent: int
    packets_lost: int  # reported lost by the receiver (NAKs), sender side
    packets_retransmitted: int
    packets_dropped: int  # too late to send: the receiver would have dropped them
    receiver_buffer_ms: int  # sender's buffer of unacknowledged data


_lib: ctypes.CDLL | None = None
_lib_lock = threading.Lock()


def library() -> ctypes.CDLL:
    """libsrt, loaded and started once; SrtError if no libsrt 1.5 is installed."""
    global _lib
    with _lib_lock:
        if _lib is None:
            _lib = _load()
        return _lib


def _load() -> ctypes.CDLL:
    errors = []
    for name in _LIBRARIES:
        try:
            lib = ctypes.CDLL(name)
            break
        except OSError as exc:
            errors.append(str(exc))
    else:
        raise SrtError("libsrt 1.5 is not installed (apt install libsrt1.5-gnutls): "
                       + "; ".join(errors))
    lib.srt_getlasterror_str.restype = ctypes.c_char_p
    lib.srt_rejectreason_str.restype = ctypes.c_char_p
    lib.srt_setsockflag.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_void_p, ctypes.c_int]
    lib.srt_sendmsg2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_void_p]
    lib.srt_bstats.argtypes = [ctypes.c_int, ctypes.POINTER(_Stats), ctypes.c_int]
    if lib.srt_startup() < 0:
        raise SrtError("srt_startup failed: " + _last_error(lib))
    return lib


def _last_error(lib: ctypes.CDLL) -> str:
    text = lib.srt_getlasterror_str()
    return text.decode(errors="replace") if text else "unknown SRT error"


def _sockaddr(host: str, port: int) -> tuple[bytes, int]:
    """A struct sockaddr for `host`, resolved now (IPv4 preferred, as SRT origins are)."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)
    infos.sort(key=lambda i: i[0] != socket.AF_INET)
    family, _, _, _, addr = infos[0]
    if family == socket.AF_INET:
        raw = (socket.AF_INET.to_bytes(2, "little") + port.to_bytes(2, "big")
               + socket.inet_pton(socket.AF_INET, str(addr[0])) + bytes(8))
    else:
        raw = (socket.AF_INET6.to_bytes(2, "little") + port.to_bytes(2, "big") + bytes(4)
               + socket.inet_pton(socket.AF_INET6, str(addr[0])) + bytes(4))
    return raw, family


Mode = Literal["caller", "listener"]


class SrtSender:
    """One SRT live-mode sending socket, as caller or as listener.

    `connect()` blocks until a peer is connected (caller: up to the connect timeout;
    listener: until a caller arrives or `close()` is called from another thread).
    """

    def __init__(self, host: str, port: int, mode: Mode = "caller", latency_ms: int = 120,
                 passphrase: str | None = None, streamid: str | None = None,
                 connect_timeout_ms: int = 3000, send_timeout_ms: int = 1000):
        self.host, self.port, self.mode = host, port, mode
        self.latency_ms = latency_ms
        self._passphrase = passphrase
        self.streamid = streamid
        self.connect_timeout_ms = connect_timeout_ms
        self.send_timeout_ms = send_timeout_ms
        self._lib = library()
        self._sock = -1
        self._listener = -1
        self._closed = threading.Event()
        self.ack_silence_s = max(ACK_SILENCE_S, latency_ms / 1000 + 1.0)
        self._acks = 0  # acknowledgements received, as last seen
        self._unacked_since: float | None = None  # first send since acks last moved
        self._next_check = 0.0

    def connect(self) -> None:
        lib = self._lib
        addr, family = _sockaddr(self.host, self.port)
        if self.mode == "caller":
            self._sock = self._new_socket()
            if lib.srt_connect(self._sock, addr, len(addr)) < 0:
                raise self._connect_error(self._sock)
        else:
            self._listener = self._new_socket()
            if lib.srt_bind(self._listener, addr, len(addr)) < 0 or lib.srt_listen(
                    self._listener, 1) < 0:
                raise SrtError(f"cannot listen on {self.host}:{self.port}: {_last_error(lib)}")
            peer = ctypes.create_string_buffer(128)
            size = ctypes.c_int(len(peer))
            sock = lib.srt_accept(self._listener, peer, ctypes.byref(size))
            lib.srt_close(self._listener)
            self._listener = -1
            if sock < 0:
                raise SrtError("no caller connected: " + _last_error(lib))
            self._sock = sock
        if self._closed.is_set():
            raise SrtError("closed")

    def send(self, data: bytes) -> None:
        """Send MPEG-TS bytes (a multiple of 188) in SRT live payloads."""
        for i in range(0, len(data), TS_PAYLOAD):
            chunk = data[i:i + TS_PAYLOAD]
            if self._lib.srt_sendmsg2(self._sock, chunk, len(chunk), None) < 0:
                code = self._lib.srt_getlasterror(None)
                raise SrtError("send failed: " + _last_error(self._lib),
                               timeout=code == SRT_ETIMEOUT)
        self._check_acks()

    def _check_acks(self) -> None:
        """SrtError when the receiver has acknowledged nothing for `ack_silence_s` of
        sending: it vanished (killed, cable out) without closing the connection."""
        now = time.monotonic()
        if self._unacked_since is None:
            self._unacked_since = now
        if now < self._next_check:
            return
        self._next_check = now + ACK_CHECK_EVERY_S
        s = _Stats()
        if self._lib.srt_bstats(self._sock, ctypes.byref(s), 0) < 0:
            return
        if s.pktRecvACKTotal != self._acks:
            self._acks = s.pktRecvACKTotal
            self._unacked_since = None  # the next send starts the count again
        elif now - self._unacked_since > self.ack_silence_s:
            raise SrtError(f"the receiver acknowledged nothing for {self.ack_silence_s:.1f} s "
                           "(gone without closing the connection)")

    def stats(self) -> SenderStats | None:
        if self._sock < 0:
            return None
        s = _Stats()
        if self._lib.srt_bstats(self._sock, ctypes.byref(s), 0) < 0:
            return None
        return SenderStats(
            rtt_ms=round(s.msRTT, 2), send_mbps=round(s.mbpsSendRate, 3),
            bandwidth_mbps=round(s.mbpsBandwidth, 3), packets_sent=s.pktSentTotal,
            bytes_sent=s.byteSentTotal, packets_lost=s.pktSndLossTotal,
            packets_retransmitted=s.pktRetransTotal, packets_dropped=s.pktSndDropTotal,
            receiver_buffer_ms=s.msSndBuf,
        )

    @property
    def connected(self) -> bool:
        return self._sock >= 0 and self._lib.srt_getsockstate(self._sock) == SRTS_CONNECTED

    def close(self) -> None:
        """Close (from any thread): wakes a blocked accept or send."""
        self._closed.set()
        for attr in ("_listener", "_sock"):
            sock = getattr(self, attr)
            if sock >= 0:
                self._lib.srt_close(sock)
                setattr(self, attr, -1)

    def _new_socket(self) -> int:
        lib = self._lib
        sock = int(lib.srt_create_socket())
        if sock < 0:
            raise SrtError("cannot create an SRT socket: " + _last_error(lib))
        self._set_int(sock, SRTO_TRANSTYPE, SRTT_LIVE)
        self._set_int(sock, SRTO_SENDER, 1)
        self._set_int(sock, SRTO_LATENCY, self.latency_ms)
        self._set_int(sock, SRTO_CONNTIMEO, self.connect_timeout_ms)
        # A send never blocks the uplink thread for long: a peer that stopped reading
        # shows as a timeout, and the destination reconnects.
        self._set_int(sock, SRTO_SNDTIMEO, self.send_timeout_ms)
        # An origin that vanished without a word (killed, cable out): libsrt declares it
        # gone after ~5 s however low this is set, so `send` notices it sooner from the
        # acknowledgements (ACK_SILENCE_S); this only keeps libsrt's check from being
        # slower still.
        self._set_int(sock, SRTO_PEERIDLETIMEO, PEER_IDLE_MS)
        if self._passphrase:
            self._set_bytes(sock, SRTO_PASSPHRASE, self._passphrase.encode())
        if self.streamid:
            self._set_bytes(sock, SRTO_STREAMID, self.streamid.encode())
        return sock

    def _set_int(self, sock: int, opt: int, value: int) -> None:
        v = ctypes.c_int(value)
        if self._lib.srt_setsockflag(sock, opt, ctypes.byref(v), ctypes.sizeof(v)) < 0:
            raise SrtError(f"SRT option {opt}: {_last_error(self._lib)}")

    def _set_bytes(self, sock: int, opt: int, value: bytes) -> None:
        buf = ctypes.create_string_buffer(value, len(value))
        if self._lib.srt_setsockflag(sock, opt, buf, len(value)) < 0:
            # The message names the option, never its value (a passphrase).
            raise SrtError(f"SRT option {opt}: {_last_error(self._lib)}")

    def _connect_error(self, sock: int) -> SrtError:
        reason = self._lib.srt_getrejectreason(sock)
        text = self._lib.srt_rejectreason_str(reason)
        detail = text.decode(errors="replace") if text else _last_error(self._lib)
        self._lib.srt_close(sock)
        self._sock = -1
        return SrtError(f"cannot connect to {self.host}:{self.port}: {detail}",
                        auth=reason in (SRT_REJ_BADSECRET, SRT_REJ_UNSECURE))
