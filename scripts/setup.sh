#!/usr/bin/env bash
# Sets up this checkout to run the appliance (and, with --test, its test suite) on
# Debian 12/13 or Raspberry Pi OS that has only git, python3 and root or sudo.
#
#   scripts/setup.sh          system packages, .venv with the appliance, node_modules
#   scripts/setup.sh --test   the same plus the test tools and Debian's Chromium
#
# Idempotent: each step checks first and does nothing when already done, so a second
# run takes about a second. Never reads stdin; every failure says what to do.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

say() { printf '[setup] %s\n' "$*" >&2; }
die() {
    printf '[setup] ERROR: %s\n' "$*" >&2
    exit 1
}

WITH_TEST=0
for arg in "$@"; do
    case $arg in
        --test) WITH_TEST=1 ;;
        -h | --help)
            sed -n '2,10p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
            exit 0
            ;;
        *) die "unknown option '$arg' (usage: scripts/setup.sh [--test])" ;;
    esac
done

# --- who can install system packages ---------------------------------------------------
if [[ $EUID -eq 0 ]]; then
    AS_ROOT=()
elif command -v sudo >/dev/null 2>&1; then
    AS_ROOT=(sudo)
else
    AS_ROOT=(false) # only fails if something actually has to be installed
fi

as_root() {
    if [[ ${AS_ROOT[0]:-} == false ]]; then
        die "need root to run '$*': run this script as root, or install sudo"
    fi
    "${AS_ROOT[@]}" "$@"
}

command -v apt-get >/dev/null 2>&1 || die "apt-get not found: this script supports Debian and Raspberry Pi OS"

# --- the board -------------------------------------------------------------------------
# (No `cmd | grep -q` in this script: with pipefail, grep quitting early can fail the pipe.)
IS_PI=0
MODEL=$(tr -d '\0' 2>/dev/null </proc/device-tree/model || true)
if [[ $MODEL == *"Raspberry Pi"* ]]; then
    IS_PI=1
    say "Raspberry Pi detected: $MODEL"
fi

# On a Pi the venv must be made by the system python with --system-site-packages, because
# picamera2 and libcamera come from apt (python3-picamera2), not from PyPI.
if ((IS_PI)); then
    PY=/usr/bin/python3
    VENV_ARGS=(--system-site-packages)
else
    PY=${PYTHON:-python3}
    VENV_ARGS=()
fi
command -v "$PY" >/dev/null 2>&1 || die "python3 not found ($PY)"
"$PY" -c 'import sys; sys.exit(sys.version_info < (3, 11))' ||
    die "$PY is Python $("$PY" -c 'import platform; print(platform.python_version())'); 3.11 or newer is needed"

is_installed() { # a Debian package is installed
    [[ $(dpkg-query -W -f='${db:Status-Abbrev}' "$1" 2>/dev/null) == ii* ]]
}

venv_ok() { # .venv exists, runs, has pip, and has the system site-packages on a Pi
    [[ -x .venv/bin/python ]] || return 1
    .venv/bin/python -c 'import pip' >/dev/null 2>&1 || return 1
    if ((IS_PI)); then
        grep -qiE '^include-system-site-packages *= *true' .venv/pyvenv.cfg || return 1
    fi
}

VENV_OUT=""
make_venv() { # keeps venv's own message in VENV_OUT for the error
    rm -rf .venv
    VENV_OUT=$("$PY" -m venv "${VENV_ARGS[@]}" .venv 2>&1)
}

# --- what is missing -------------------------------------------------------------------
say "checking system packages$( ((WITH_TEST)) && printf ' (with test tools)')"
MISSING=()

if ! venv_ok; then
    # The real check for python3-venv: Debian's python3 imports venv but cannot run
    # ensurepip without python3-venv, so try to make the venv itself.
    if [[ -e .venv ]]; then
        say ".venv is incomplete or lacks the system site-packages: recreating it"
    fi
    say "creating .venv with $PY${VENV_ARGS[*]:+ ${VENV_ARGS[*]}}"
    if ! make_venv; then
        say "'$PY -m venv' cannot work yet (no ensurepip): python3-venv is needed"
        rm -rf .venv
        case $(readlink -f "$(command -v "$PY")") in
            /usr/bin/python3*) MISSING+=(python3-venv) ;;
            *) die "'$PY -m venv' fails and $PY is not Debian's python3: fix it or run with PYTHON=/usr/bin/python3. $VENV_OUT" ;;
        esac
    fi
fi
if ((IS_PI)) && ! /usr/bin/python3 -c 'import picamera2' >/dev/null 2>&1; then
    MISSING+=(python3-picamera2)
fi
if ! command -v ffmpeg >/dev/null 2>&1 || ! command -v ffprobe >/dev/null 2>&1; then
    MISSING+=(ffmpeg)
fi
command -v node >/dev/null 2>&1 || MISSING+=(nodejs)
command -v npm >/dev/null 2>&1 || MISSING+=(npm)
# systemd-python (sd_notify, journald) is built by pip against libsystemd: its headers,
# pkg-config to find them, a C compiler, and Python's own headers for the venv's python.
for pkg in libsystemd-dev pkg-config gcc; do
    is_installed "$pkg" || MISSING+=("$pkg")
done
if ! "$PY" -c 'import os, sys, sysconfig
sys.exit(not os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h")))'; then
    case $(readlink -f "$(command -v "$PY")") in
        /usr/bin/python3*) MISSING+=(python3-dev) ;;
        *) die "$PY has no C headers (Python.h), which pip needs to build systemd-python: install them, or run with PYTHON=/usr/bin/python3" ;;
    esac
fi
# libsrt, which the SRT uplinks load in-process (ctypes); either flavour will do.
if ! is_installed libsrt1.5-gnutls && ! is_installed libsrt1.5-openssl; then
    MISSING+=(libsrt1.5-gnutls)
fi
if ((WITH_TEST)); then
    if ! command -v chromium >/dev/null 2>&1 && ! command -v chromium-browser >/dev/null 2>&1; then
        MISSING+=(chromium)
    fi
    # Python Playwright drives Chromium through the node binary in its wheel, which
    # links libatomic.so.1: not on a minimal Debian (Debian's own node doesn't need it).
    is_installed libatomic1 || MISSING+=(libatomic1)
    # Chromium only recommends fonts; without one, screenshots show boxes for text.
    if ! is_installed fonts-liberation && ! is_installed fonts-dejavu-core; then
        MISSING+=(fonts-liberation)
    fi
    # The uplink tests' origins: nginx with the RTMP module and, for the RTMPS front, the
    # stream module; srt-live-transmit; openssl to make the test CA; ip and tc for the
    # network-namespace test. (The nginx package itself: Debian 13 has no nginx-light.)
    for pkg in nginx libnginx-mod-rtmp libnginx-mod-stream srt-tools openssl iproute2; do
        is_installed "$pkg" || MISSING+=("$pkg")
    done
    # systemd-analyze, systemd-sysusers and systemd-tmpfiles check the files in systemd/
    # (no running systemd needed); unshare mounts the doctor test's tmpfs in a namespace.
    command -v systemd-analyze >/dev/null 2>&1 || MISSING+=(systemd)
    command -v unshare >/dev/null 2>&1 || MISSING+=(util-linux)
    # The HTTPS front's test (tests/test_nginx_front.py) asks it for HTTP/2 with curl.
    is_installed curl || MISSING+=(curl)
    # The update tests (issue 8): the real rauc builds, checks and installs bundles (its
    # service on a private D-Bus), squashfs-tools packs them, mtools/dosfstools/e2fsprogs
    # make and read the slot images. (The image itself installs rauc on its own.)
    for pkg in rauc squashfs-tools mtools dosfstools e2fsprogs dbus; do
        is_installed "$pkg" || MISSING+=("$pkg")
    done
    # The image tests (tests/image/): image/build.sh's tools (mmdebstrap, genimage, fdisk),
    # QEMU to boot it, and ssh/scp to look inside. ci-arm64 (slow tests) is built under
    # qemu-user (binfmt_misc, checked by mmdebstrap with arch-test) and boots in
    # qemu-system-aarch64 (qemu-system-arm).
    for pkg in mmdebstrap genimage fdisk qemu-system-x86 openssh-client \
        qemu-user-static binfmt-support arch-test qemu-system-arm; do
        is_installed "$pkg" || MISSING+=("$pkg")
    done
    # The fleet tests (issue 7): the MQTT broker, the MQTT-to-Prometheus bridge,
    # Prometheus with promtool, and Alertmanager's amtool.
    for pkg in mosquitto prometheus-mqtt-exporter prometheus prometheus-alertmanager; do
        is_installed "$pkg" || MISSING+=("$pkg")
    done
fi

# --- install it ------------------------------------------------------------------------
if ((${#MISSING[@]})); then
    # A freshly booted board often runs apt-daily: wait for its dpkg lock, don't fail.
    APT=(env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600)
    say "updating the package lists (apt-get update)"
    as_root "${APT[@]}" update -qq ||
        die "apt-get update failed: check the network and /etc/apt/sources.list*"
    # Raspberry Pi OS named its Chromium package chromium-browser until late 2024.
    for i in "${!MISSING[@]}"; do
        if [[ ${MISSING[$i]} == chromium ]]; then
            policy=$(apt-cache policy chromium 2>/dev/null || true)
            [[ $policy =~ Candidate:\ [0-9] ]] || MISSING[i]=chromium-browser
        fi
    done
    say "installing: ${MISSING[*]} (apt-get install; a few minutes on a fresh machine)"
    # dpkg prints thousands of lines: keep them in a log, show its end if it fails.
    apt_log=$(mktemp -t appliance-apt.XXXXXX.log)
    if ! as_root "${APT[@]}" install -y -q --no-install-recommends \
        -o Dpkg::Use-Pty=0 "${MISSING[@]}" </dev/null >"$apt_log" 2>&1; then
        tail -n 30 "$apt_log" >&2
        die "apt-get install ${MISSING[*]} failed (full log: $apt_log)"
    fi
    rm -f "$apt_log"
else
    say "system packages: all present"
fi

NODE_MAJOR=$(node -p 'process.versions.node.split(".")[0]' 2>/dev/null || echo 0)
((NODE_MAJOR >= 18)) || die "node $(node --version 2>/dev/null || echo '(none)') is too old: 18 or newer is needed for npm ci"

# --- the Python environment ------------------------------------------------------------
if ! venv_ok; then
    say "creating .venv with $PY${VENV_ARGS[*]:+ ${VENV_ARGS[*]}} (now that python3-venv is installed)"
    make_venv || die "'$PY -m venv ${VENV_ARGS[*]} .venv' failed even with python3-venv installed: $VENV_OUT"
fi

# pip only runs when pyproject.toml, the extras or the Python changed since the last
# install; the install is editable, so code changes need nothing.
EXTRAS=$( ((WITH_TEST)) && echo test || echo run)
PY_STAMP=.venv/.appliance-setup
pyproject_hash=$(cat pyproject.toml <(.venv/bin/python -VV) | sha256sum | cut -d' ' -f1)
stamp=$(cat "$PY_STAMP" 2>/dev/null || true)
if [[ $stamp == "$pyproject_hash test" || $stamp == "$pyproject_hash $EXTRAS" ]] && [[ -x .venv/bin/appliance ]]; then
    say "python packages: up to date"
else
    target=.
    ((WITH_TEST)) && target='.[test]'
    say "installing the appliance into .venv (pip install -e '$target'), this takes a minute the first time"
    PIP_NO_INPUT=1 .venv/bin/python -m pip install -q --disable-pip-version-check \
        --progress-bar off -e "$target" || die "pip install -e '$target' failed (see above)"
    echo "$pyproject_hash $EXTRAS" >"$PY_STAMP"
fi

# --- the browser-side packages ---------------------------------------------------------
NPM_STAMP=node_modules/.appliance-setup
lock_hash=$(sha256sum package-lock.json | cut -d' ' -f1)
if [[ $(cat "$NPM_STAMP" 2>/dev/null || true) == "$lock_hash" ]]; then
    say "npm packages: up to date"
else
    say "installing the web page's npm packages (npm ci)"
    # --ignore-scripts: nothing may run or download at install time.
    npm ci --ignore-scripts --no-audit --no-fund --loglevel=error </dev/null ||
        die "npm ci failed (see above)"
    echo "$lock_hash" >"$NPM_STAMP"
fi

say "ready"
