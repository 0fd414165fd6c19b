#!/usr/bin/env bash
# Makes a signed RAUC bundle (verity format) of one slot group: the boot slot's vfat image
# and the system slot's ext4 image, both made by image/build.sh.
#
#   image/bundle.sh --boot boot.vfat --rootfs rootfs.ext4 --version 1.4.0 \
#       --compatible appliance-ci-amd64 --cert signing.cert.pem --key signing.key.pem \
#       [--keyring ca.cert.pem] --out appliance-1.4.0.raucb
#
# --version must be the image's /usr/lib/appliance-version (dotted numbers), build.sh --version:
# the device refuses a bundle older than the image it runs (appliance/update/handlers.py).
# --keyring checks the signature once it is made (recommended: the CA of the target).
set -euo pipefail

die() {
    printf 'bundle.sh: %s\n' "$*" >&2
    exit 2
}

boot="" rootfs="" version="" compatible="" cert="" key="" keyring="" out=""
while (($#)); do
    [[ $1 == -h || $1 == --help || $# -ge 2 ]] || die "option '$1' needs a value"
    case $1 in
        --boot) boot=$2 ;;
        --rootfs) rootfs=$2 ;;
        --version) version=$2 ;;
        --compatible) compatible=$2 ;;
        --cert) cert=$2 ;;
        --key) key=$2 ;;
        --keyring) keyring=$2 ;;
        --out) out=$2 ;;
        -h | --help)
            sed -n '2,12p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
            exit 0
            ;;
        *) die "unknown option '$1'" ;;
    esac
    shift 2
done
for v in boot rootfs version compatible cert key out; do
    [[ -n ${!v} ]] || die "--$v is required (see --help)"
done
[[ $version =~ ^[0-9]+(\.[0-9]+)*$ ]] || die "--version '$version' is not dotted numbers"
[[ -f $boot && -f $rootfs ]] || die "no such image: $boot or $rootfs"
command -v rauc >/dev/null || die "rauc is not installed (apt install rauc squashfs-tools)"

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir "$work/content"
# Hard links where the file system allows, so a large rootfs is not copied.
ln "$boot" "$work/content/boot.vfat" 2>/dev/null || cp "$boot" "$work/content/boot.vfat"
ln "$rootfs" "$work/content/rootfs.ext4" 2>/dev/null || cp "$rootfs" "$work/content/rootfs.ext4"
cat >"$work/content/manifest.raucm" <<MANIFEST
[update]
compatible=$compatible
version=$version
description=appliance $version for $compatible
build=$(date -u +%Y%m%dT%H%M%SZ)

[bundle]
format=verity

[image.rootfs]
filename=rootfs.ext4

[image.boot]
filename=boot.vfat
MANIFEST

args=(--cert="$cert" --key="$key")
# APPLIANCE_BUNDLE_FAST=1 (tests): lz4 instead of mksquashfs' default gzip, several times
# faster to make and to check on the device, about 1.5 times larger.
[[ ${APPLIANCE_BUNDLE_FAST:-0} == 1 ]] && args+=(--mksquashfs-args="-comp lz4")
[[ -n $keyring ]] && args+=(--signing-keyring="$keyring")
rm -f "$out"
rauc "${args[@]}" bundle "$work/content" "$out" >&2
