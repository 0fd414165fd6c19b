"""The auth building blocks on their own: password hashes, the secrets file, sessions,
the login limiter, playback tokens and secret masking."""

from __future__ import annotations

import json
import stat
import threading
from pathlib import Path

import pytest

from appliance import passwords
from appliance.config.load import validate
from appliance.config.schema import Config, Uplink
from appliance.credentials import CredentialError, CredentialStore
from appliance.web import playback
from appliance.web.logs import LogRing, RedactSecrets
from appliance.web.masking import MASK, mask, secret_values, unmask
from appliance.web.ratelimit import FREE_FAILURES, GLOBAL_FAILURES, MAX_LOCK_S, LoginLimiter
from appliance.web.sessions import SessionStore


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


# -- passwords ---------------------------------------------------------------------------


def test_password_hash_is_salted_scrypt_and_verifies() -> None:
    a = passwords.hash_password("correct horse")
    b = passwords.hash_password("correct horse")
    assert a != b  # a salt per password
    assert a.startswith(f"scrypt${passwords.SCRYPT_N}${passwords.SCRYPT_R}$")
    assert "correct horse" not in a
    assert passwords.verify_password("correct horse", a)
    assert not passwords.verify_password("correct horsf", a)
    assert not passwords.needs_rehash(a)


def test_short_password_refused_and_tampered_hash_never_verifies() -> None:
    with pytest.raises(passwords.PasswordError):
        passwords.hash_password("x" * (passwords.MIN_LENGTH - 1))
    good = passwords.hash_password("0123456789")
    parts = good.split("$")
    huge_n = "$".join([parts[0], str(2**30), *parts[2:]])  # would need 128 GiB
    assert not passwords.verify_password("0123456789", huge_n)
    assert not passwords.verify_password("0123456789", "plain:0123456789")
    assert passwords.needs_rehash("$".join([parts[0], "16384", *parts[2:]]))


# -- the secrets file ----------------------------------------------------------------------


def test_secrets_file_is_0600_and_holds_no_clear_secret(tmp_path: Path) -> None:
    store = CredentialStore(tmp_path)
    assert store.setup_required()
    assert store.set_password("first password", only_if_unset=True)
    assert not store.set_password("second password", only_if_unset=True)
    assert store.verify_password("first password")
    assert not store.verify_password("second password")
    info, token = store.create_token("backup")
    text = store.path.read_text()
    assert stat.S_IMODE(store.path.stat().st_mode) == 0o600
    assert "first password" not in text and token not in text
    assert store.check_token(token) == info
    assert store.check_token(token + "x") is None
    assert [t.id for t in store.tokens()] == [info.id]
    assert store.revoke_token(info.id) and not store.revoke_token(info.id)
    assert store.check_token(token) is None


def test_a_change_by_another_process_is_seen_at_once(tmp_path: Path) -> None:
    daemon, cli = CredentialStore(tmp_path), CredentialStore(tmp_path)
    assert daemon.setup_required()
    stamp = daemon.password_stamp()
    cli.set_password("set from the cli")
    assert not daemon.setup_required()
    assert daemon.password_stamp() != stamp
    _, token = cli.create_token("script")
    assert daemon.check_token(token) is not None


def test_concurrent_token_creation_loses_none(tmp_path: Path) -> None:
    stores = [CredentialStore(tmp_path) for _ in range(4)]  # as separate processes would
    threads = [threading.Thread(target=lambda s=s: [s.create_token("t") for _ in range(5)])
               for s in stores]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(json.loads((tmp_path / "secrets.json").read_text())["tokens"]) == 20


def test_token_names_are_checked(tmp_path: Path) -> None:
    with pytest.raises(CredentialError):
        CredentialStore(tmp_path).create_token("../../etc")


def test_playback_key_is_made_once(tmp_path: Path) -> None:
    key = CredentialStore(tmp_path).playback_key()
    assert len(key) == 32
    assert CredentialStore(tmp_path).playback_key() == key


# -- sessions --------------------------------------------------------------------------------


def test_sessions_end_when_idle_absolute_or_password_changed() -> None:
    clock = Clock()
    store = SessionStore(idle_s=60, absolute_s=300, clock=clock)
    sid, session = store.create("pw1")
    assert len(sid) >= 43  # 256 bits, base64
    assert store.get(sid, "pw1") is session
    assert store.get(sid + "x", "pw1") is None
    clock.now += 59
    assert store.get(sid, "pw1") is session  # touched: the idle time restarts
    clock.now += 59
    assert store.get(sid, "pw1") is session
    clock.now += 61
    assert store.get(sid, "pw1") is None  # idle too long

    sid, session = store.create("pw1")
    for _ in range(6):
        clock.now += 50
        assert store.get(sid, "pw1") is session
    clock.now += 1
    assert store.get(sid, "pw1") is None  # 301 s after login, however active

    sid, _ = store.create("pw1")
    assert store.get(sid, "pw2") is None


def test_session_count_is_bounded() -> None:
    clock = Clock()
    store = SessionStore(max_sessions=3, clock=clock)
    ids = []
    for _ in range(5):
        clock.now += 1
        ids.append(store.create("pw")[0])
    assert len(store) == 3
    assert store.get(ids[0], "pw") is None and store.get(ids[-1], "pw") is not None


# -- login limiter ----------------------------------------------------------------------------


def test_lockout_grows_per_address_and_resets_on_success() -> None:
    clock = Clock()
    lim = LoginLimiter(clock)
    for _ in range(FREE_FAILURES):
        assert lim.retry_after("a") == 0
        assert lim.failure("a") == 0
    waits = []
    for _ in range(12):
        assert lim.retry_after("a") == 0
        lim.failure("a")
        waits.append(lim.retry_after("a"))
        clock.now += waits[-1]
    assert waits[:4] == [2, 4, 8, 16]
    assert waits[-1] == MAX_LOCK_S
    assert lim.retry_after("b") == 0  # another address is not affected
    lim.success("a")
    assert lim.retry_after("a") == 0 and lim.failure("a") == 0


def test_global_cap_stops_a_distributed_guess() -> None:
    clock = Clock()
    lim = LoginLimiter(clock)
    for i in range(GLOBAL_FAILURES):
        lim.failure(f"10.0.0.{i}")
    assert lim.retry_after("192.0.2.1") > 0
    clock.now += 61
    assert lim.retry_after("192.0.2.1") == 0


# -- playback tokens ------------------------------------------------------------------------


def test_playback_token_signs_expiry_and_key() -> None:
    key = b"k" * 32
    token = playback.sign(key, 2_000)
    assert playback.verify(key, token, now=1_999)
    assert not playback.verify(key, token, now=2_001)  # expired
    assert not playback.verify(b"x" * 32, token, now=1_000)  # another device
    exp, mac = token.split(".")
    assert not playback.verify(key, f"{int(exp) + 1000}.{mac}", now=1_000)  # extended
    assert not playback.verify(key, "", now=1_000)
    assert set(token) <= set("0123456789.-_abcdefghijklmnopqrstuvwxyz"
                             "ABCDEFGHIJKLMNOPQRSTUVWXYZ")


# -- masking and redaction --------------------------------------------------------------------

SECRET_CFG = {
    "uplink": [
        {"name": "a", "url": "rtmp://127.0.0.1/live", "key": "stream-key-aaaa"},
        {"name": "b", "url": "srt://127.0.0.1:9000", "passphrase": "passphrase-bbbb"},
    ],
    "fleet": {"broker": "mqtts://127.0.0.1", "device_id": "cam", "password": "fleet-pw-cccc"},
}


def test_mask_hides_every_secret_and_unmask_restores_it() -> None:
    cfg = validate(SECRET_CFG)
    secrets = secret_values(cfg)
    assert sorted(secrets) == ["fleet-pw-cccc", "passphrase-bbbb", "stream-key-aaaa"]
    masked = mask(Config, cfg.model_dump(mode="json"))
    text = json.dumps(masked)
    assert not any(s in text for s in secrets)
    assert masked["uplink"][0]["key"] == MASK and masked["uplink"][1]["key"] is None
    # The masked dump is itself a valid config (the mask fits every secret's limits).
    Config.model_validate(masked)
    # Sent back in another order, each mask finds its own uplink's secret by name.
    masked["uplink"].reverse()
    back = validate(unmask(Config, masked, cfg))
    assert {u.name: u.key or u.passphrase for u in back.uplink} == {
        "a": "stream-key-aaaa", "b": "passphrase-bbbb"}
    assert back.fleet is not None and back.fleet.password == "fleet-pw-cccc"


def test_a_mask_never_becomes_a_secret() -> None:
    new = unmask(Uplink, {"name": "n", "url": "rtmp://h/app", "key": MASK}, None)
    assert "key" not in new
    changed = unmask(Uplink, {"name": "a", "key": "new-key-dddd"}, validate(SECRET_CFG).uplink[0])
    assert changed["key"] == "new-key-dddd"


def test_redaction_filter_and_ring() -> None:
    import logging

    ring, redact = LogRing(capacity=3), RedactSecrets()
    ring.addFilter(redact)
    redact.set_secrets(["stream-key-aaaa"])
    logger = logging.getLogger("test.redact")
    logger.propagate = False
    logger.addHandler(ring)
    try:
        logger.warning("pushing with %s", "stream-key-aaaa")
        for i in range(3):
            logger.warning("line %d", i)
    finally:
        logger.removeHandler(ring)
    assert [r["message"] for r in ring.recent(10)] == ["line 0", "line 1", "line 2"]
    ring2 = LogRing()
    ring2.addFilter(redact)
    record = logging.LogRecord("x", logging.INFO, "", 0, "key=%s", ("stream-key-aaaa",), None)
    ring2.handle(record)
    assert ring2.recent(1)[0]["message"] == f"key={MASK}"
