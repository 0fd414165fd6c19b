"""The `appliance` command line."""

from __future__ import annotations

import argparse
import getpass
import ipaddress
import os
import sys
import time
from pathlib import Path

from appliance.board import PROFILES, BoardError, detect_board, profile_named
from appliance.config.load import ConfigError, load
from appliance.passwords import PasswordError


def default_state_dir() -> Path:
    system = Path("/var/lib/appliance")
    if os.geteuid() == 0 or system.is_dir():
        return system
    return Path(os.environ.get("XDG_STATE_HOME", Path.home() / ".local/state")) / "appliance"


def cmd_run(args: argparse.Namespace) -> int:
    from appliance.daemon import run

    return run(args.config, args.state_dir or default_state_dir())


def cmd_check_config(args: argparse.Namespace) -> int:
    try:
        # The ladder must fit the board's encoders: check for the one asked for, else ours.
        board = profile_named(args.board) if args.board else detect_board()
        load(args.file, board)
    except BoardError as exc:
        print(f"{args.file}: {exc}", file=sys.stderr)
        return 2
    except ConfigError as exc:
        for err in exc.errors:
            print(f"{args.file}: {err}", file=sys.stderr)
        return 2
    print(f"{args.file}: OK for a {board.name}")
    return 0


def _read_password(from_stdin: bool) -> str:
    """The new password: typed twice without echo on a terminal, else one line of stdin.
    Never an argument: argv is visible to every user in `ps`."""
    if from_stdin or not sys.stdin.isatty():
        return sys.stdin.readline().rstrip("\r\n")
    first = getpass.getpass("New admin password: ")
    if getpass.getpass("Again: ") != first:
        raise PasswordError("the two passwords differ")
    return first


def cmd_passwd(args: argparse.Namespace) -> int:
    from appliance.credentials import CredentialStore

    try:
        password = _read_password(args.stdin)
        CredentialStore(args.state_dir or default_state_dir()).set_password(password)
    except PasswordError as exc:
        print(f"appliance passwd: {exc}", file=sys.stderr)
        return 2
    print("admin password set; a running daemon uses it at once (its sessions end)",
          file=sys.stderr)
    return 0


def cmd_token(args: argparse.Namespace) -> int:
    from appliance.credentials import CredentialError, CredentialStore

    store = CredentialStore(args.state_dir or default_state_dir())
    if args.action == "create":
        try:
            info, token = store.create_token(args.name)
        except CredentialError as exc:
            print(f"appliance token: {exc}", file=sys.stderr)
            return 2
        print(f"token {info.id} ({info.name}); it is shown this once:", file=sys.stderr)
        print(token)
        return 0
    if args.action == "list":
        for t in store.tokens():
            created = time.strftime("%Y-%m-%d %H:%M", time.localtime(t.created))
            print(f"{t.id}  {created}  {t.name}")
        return 0
    if not store.revoke_token(args.id):
        print(f"appliance token: no token {args.id}", file=sys.stderr)
        return 1
    print(f"token {args.id} revoked", file=sys.stderr)
    return 0


def cmd_doctor(args: argparse.Namespace) -> int:
    from appliance.doctor import main as doctor

    return doctor(args.config, args.state_dir or default_state_dir(), args.modem)


def cmd_tls_cert(args: argparse.Namespace) -> int:
    import socket

    from appliance.provision.tls import default_dir, ensure

    directory = args.dir or default_dir(args.state_dir or default_state_dir())
    info, made = ensure(directory, args.hostname or socket.gethostname(), args.ip, args.force)
    what = "made a self-signed" if made else "kept the"
    print(f"{what} certificate in {directory}: {', '.join(info.names) or info.subject}, "
          f"until {info.not_after:%Y-%m-%d}, SHA-256 {info.sha256}", file=sys.stderr)
    return 0


def cmd_health(args: argparse.Namespace) -> int:
    from appliance.update.health import local_url
    from appliance.update.health import main as health

    url = args.url
    if url is None:
        try:
            web = load(args.config).web
            url = local_url(web.listen, web.tls)
        except (ConfigError, OSError):  # no or a bad config: the default address
            url = local_url("127.0.0.1:8080", False)
    return health(url.rstrip("/"), args.timeout, args.reboot_trial)


def cmd_firstboot(args: argparse.Namespace) -> int:
    from appliance.provision.firstboot import run as firstboot

    # The boot partition is a device path: under --root like every other one.
    return firstboot(args.root / str(args.boot_dir).lstrip("/"), args.root)


def cmd_fleet(args: argparse.Namespace) -> int:
    from appliance.fleet.view import Credentials
    from appliance.fleet.view import main as fleet_view

    if args.once is not None and args.once < 0:
        print("appliance fleet: --once needs a number of seconds >= 0", file=sys.stderr)
        return 2
    creds = Credentials(args.ca, args.cert, args.key, args.username, args.password_file)
    return fleet_view(args.broker, creds, args.once)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="appliance", description="Edge streaming appliance")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run the daemon")
    run.add_argument("--config", type=Path, help="TOML config (default /etc/appliance/...)")
    run.add_argument("--state-dir", type=Path, help="where state is kept")
    run.set_defaults(func=cmd_run)

    check = sub.add_parser("check-config", help="validate a config file")
    check.add_argument("file", type=Path)
    check.add_argument("--board", choices=list(PROFILES),
                       help="validate for this board (default: this one, or $APPLIANCE_BOARD)")
    check.set_defaults(func=cmd_check_config)

    passwd = sub.add_parser("passwd", help="set the admin password of the web page and API")
    passwd.add_argument("--stdin", action="store_true",
                        help="read it from the first line of stdin (also when not a tty)")
    passwd.add_argument("--state-dir", type=Path, help="where state is kept")
    passwd.set_defaults(func=cmd_passwd)

    state = argparse.ArgumentParser(add_help=False)
    state.add_argument("--state-dir", type=Path, help="where state is kept")
    token = sub.add_parser("token", help="API bearer tokens for scripts")
    actions = token.add_subparsers(dest="action", required=True)
    create = actions.add_parser("create", parents=[state],
                                help="make a token and print it (once)")
    create.add_argument("name", help="what it is for, e.g. backup-script")
    actions.add_parser("list", parents=[state], help="list tokens (never the tokens)")
    revoke = actions.add_parser("revoke", parents=[state], help="revoke a token by its id")
    revoke.add_argument("id")
    token.set_defaults(func=cmd_token)

    doctor = sub.add_parser(
        "doctor", help="check camera, encoder, GPIO, modem, libraries, disk and clock",
        description="One line per check (OK, WARN, FAIL, INFO); exit 1 if any check fails.")
    doctor.add_argument("--config", type=Path,
                        help="the config to check against (default /etc/appliance/...)")
    doctor.add_argument("--state-dir", type=Path, help="where state is kept")
    doctor.add_argument("--modem", metavar="PORT",
                        help="also ask this serial port for AT (default: the configured modem)")
    doctor.set_defaults(func=cmd_doctor)

    cert = sub.add_parser(
        "tls-cert", parents=[state], help="make the HTTPS front's self-signed certificate",
        description="Keeps a usable certificate and key in DIR; otherwise (none, a pair that "
        "does not match, or a self-made one near its end or for another hostname) makes a "
        "self-signed one for HOSTNAME and HOSTNAME.local.")
    cert.add_argument("--dir", type=Path, help="where cert.pem and key.pem are "
                      "(default: /data/tls on the device, else <state dir>/tls)")
    cert.add_argument("--hostname", help="default: this machine's hostname")
    cert.add_argument("--ip", type=ipaddress.ip_address, action="append", default=[],
                      metavar="ADDR", help="also an IP address the certificate names "
                      "(repeatable)")
    cert.add_argument("--force", action="store_true", help="make a new one in any case")
    cert.set_defaults(func=cmd_tls_cert)

    health = sub.add_parser(
        "health", help="check that this boot works (page, source, encoder); for updates",
        description="Repeats the checks until all pass (exit 0) or --timeout (exit 1). "
        "appliance-health.service runs it before boot-complete.target.")
    health.add_argument("--url", help="the daemon (default: web.listen of --config)")
    health.add_argument("--config", type=Path, default=Path("/etc/appliance/appliance.toml"),
                        help="where web.listen is read (default /etc/appliance/...)")
    health.add_argument("--timeout", type=float, default=120.0, metavar="SECONDS",
                        help="give up after this long (default 120)")
    health.add_argument("--reboot-trial", action="store_true",
                        help="on failure in a trial boot, reboot (back to the committed slot)")
    health.set_defaults(func=cmd_health)

    first = sub.add_parser(
        "firstboot", help="apply appliance-setup.toml from the boot partition",
        description="Checks the whole file, applies it (hostname, admin password, Wi-Fi, "
        "uplinks, fleet, SSH keys), then removes its secrets. Exit 2 when the file is wrong "
        "(nothing applied; the errors are also in <state dir>/firstboot.json).")
    first.add_argument("--boot-dir", type=Path, default=Path("/boot/select"),
                       help="where the file is (default /boot/select)")
    first.add_argument("--root", type=Path, default=Path("/"),
                       help="the device's root: every path is taken under it (default /)")
    first.set_defaults(func=cmd_firstboot)

    fleet = sub.add_parser(
        "fleet", help="live terminal view of a fleet, read from the MQTT broker",
        description="One row per device from fleet/v1/+/status and fleet/v1/+/telemetry.")
    fleet.add_argument("--broker", required=True, metavar="URL",
                       help="mqtts://HOST[:8883] or mqtt://HOST[:1883]")
    fleet.add_argument("--ca", type=Path, metavar="FILE", help="CA certificate of the broker")
    fleet.add_argument("--cert", type=Path, metavar="FILE", help="client certificate")
    fleet.add_argument("--key", type=Path, metavar="FILE", help="client private key")
    fleet.add_argument("--username", metavar="U", help="username (instead of a certificate)")
    fleet.add_argument("--password-file", type=Path, metavar="F",
                       help="file whose first line is the password (never in argv)")
    fleet.add_argument("--once", type=float, metavar="SECONDS",
                       help="print one snapshot after SECONDS and exit")
    fleet.set_defaults(func=cmd_fleet)
    return parser


def main(argv: list[str] | None = None) -> int:
    from appliance.notify import configure_logging

    # Structured entries to journald when stderr is the journal (under systemd), else text.
    configure_logging(os.environ.get("APPLIANCE_LOG_LEVEL", "INFO"))
    args = build_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
