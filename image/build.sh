#!/usr/bin/env bash
# Builds the appliance's OS image and its update payload.
#
#   bash image/build.sh --flavour ci-amd64|ci-arm64|rpi --out DIR --keyring CA.pem \
#       [--version X.Y.Z]
#
# --keyring is the CA whose signed update bundles the image accepts (image/rauc/README.md):
# the development CA of image/rauc/dev-ca.sh for test images, the release CA (kept outside
# this repository) for release images.
#
# Writes into DIR: disk.img (the whole card: GPT with bootsel, boot_a/b, system_a/b,
# data; see image/README.md), boot.vfat and rootfs.ext4 (one slot's images, what an
# update bundle carries: image/bundle.sh), and version.
#
# Steps: (1) wheels of the appliance and its dependencies, built on this machine;
# (2) the base root filesystem (Debian packages + a venv with the third-party wheels),
# cached as a tarball under $APPLIANCE_IMAGE_CACHE (default /var/cache/appliance-image)
# keyed by a hash of everything that goes into it, so a rebuild only pays for step 3;
# (3) the appliance wheel, systemd units, image/rootfs/ and the read-only-root
# arrangements layered on a copy; (4) filesystems and the partitioned disk (genimage).
# Needs root (chroot, ownership in the filesystems) and installs its tools with apt.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
IMAGE="$ROOT/image"
say() { printf '[image] %s\n' "$*" >&2; }
die() {
    printf '[image] ERROR: %s\n' "$*" >&2
    exit 1
}

FLAVOUR="" OUT="" VERSION="" KEYRING=""
while (($#)); do
    case $1 in
        --flavour) FLAVOUR=${2:?}; shift 2 ;;
        --out) OUT=${2:?}; shift 2 ;;
        --version) VERSION=${2:?}; shift 2 ;;
        --keyring) KEYRING=${2:?}; shift 2 ;;
        -h | --help) sed -n '2,22p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) die "unknown option '$1' (usage: image/build.sh --flavour NAME --out DIR --keyring CA.pem [--version V])" ;;
    esac
done
[[ -n $FLAVOUR && -n $OUT && -n $KEYRING ]] || die "--flavour, --out and --keyring are required"
[[ -f $KEYRING ]] && openssl x509 -noout -in "$KEYRING" 2>/dev/null ||
    die "--keyring $KEYRING is not a PEM certificate"
[[ -f $IMAGE/flavours/$FLAVOUR.sh ]] ||
    die "unknown flavour '$FLAVOUR' (one of: $(cd "$IMAGE/flavours" && ls | sed 's/\.sh$//' | xargs))"
((EUID == 0)) || die "run as root: the build chroots and writes root-owned files"
VENV_SYSTEM_SITE=0
# shellcheck source=/dev/null
source "$IMAGE/flavours/$FLAVOUR.sh"
if [[ -z $VERSION ]]; then
    VERSION=$(sed -n 's/^version = "\(.*\)"/\1/p' "$ROOT/pyproject.toml" | head -1)
fi
[[ $VERSION =~ ^[0-9]+(\.[0-9]+)*$ ]] || die "--version '$VERSION' is not dotted numbers"
# The CPU's name in wheel tags and binfmt_misc; the GPT type of the slots, "Linux root
# (this arch)", so systemd-repart (image/rootfs/usr/lib/repart.d) matches only data
# ("Linux filesystem"), the one partition it grows.
case $ARCH in
    amd64) CPU=x86_64 ROOT_TYPE=4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709 ;;
    arm64) CPU=aarch64 ROOT_TYPE=B921B045-1DF0-41C3-AF44-4C6F280D3FAE ;;
    *) die "flavour $FLAVOUR: unsupported architecture $ARCH" ;;
esac
FOREIGN=0
[[ $ARCH == "$(dpkg --print-architecture)" ]] || FOREIGN=1
CACHE=${APPLIANCE_IMAGE_CACHE:-/var/cache/appliance-image}
mkdir -p "$OUT" "$CACHE"
OUT=$(cd "$OUT" && pwd)

# Sizes. A slot must hold any later release too, so it is fixed well above today's root.
BOOTSEL_MB=32 BOOT_MB=256 SYSTEM_MB=2048 DATA_MB=128

# Packages of every flavour: init, network (dnsmasq-base for the setup access point's
# shared mode, polkitd so the daemon may drive NetworkManager), the front, updates, mDNS,
# SSH, the runtime libraries the appliance loads (libsrt through ctypes), and the tools
# first boot and the updater call (mtools for the vfat boot partitions).
PACKAGES=(
    systemd systemd-sysv systemd-timesyncd udev dbus kmod initramfs-tools
    network-manager avahi-daemon libnss-mdns openssh-server
    nginx rauc rauc-service squashfs-tools mtools dosfstools e2fsprogs fdisk
    dnsmasq-base iw polkitd
    python3 python3-venv libsrt1.5-openssl libsystemd0 openssl ca-certificates
    iproute2 procps less
)

need_tools() {
    local missing=() tool pkg
    for pair in mmdebstrap:mmdebstrap openssl:openssl genimage:genimage mkfs.vfat:dosfstools mcopy:mtools \
        mke2fs:e2fsprogs sfdisk:fdisk; do
        tool=${pair%%:*} pkg=${pair#*:}
        command -v "$tool" >/dev/null 2>&1 || missing+=("$pkg")
    done
    # A foreign architecture's chroot runs its programs through qemu-user, registered with
    # binfmt_misc (the package's install registers it once binfmt_misc is mounted);
    # mmdebstrap checks that with arch-test.
    if ((FOREIGN)); then
        command -v "qemu-$CPU-static" >/dev/null 2>&1 || missing+=(qemu-user-static binfmt-support)
        command -v arch-test >/dev/null 2>&1 || missing+=(arch-test)
        [[ -e /proc/sys/fs/binfmt_misc/register ]] ||
            mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc ||
            die "cannot mount binfmt_misc (a container without the right?): run 'mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc' as root on the host"
    fi
    if ((${#missing[@]})); then
        say "installing build tools: ${missing[*]}"
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}" >&2
    fi
    if ((FOREIGN)) && [[ $(head -1 "/proc/sys/fs/binfmt_misc/qemu-$CPU" 2>/dev/null) != enabled ]]; then
        say "registering qemu-$CPU with binfmt_misc"
        update-binfmts --enable "qemu-$CPU" >&2 ||
            die "qemu-$CPU is not registered with binfmt_misc and 'update-binfmts --enable qemu-$CPU' failed"
    fi
}
need_tools

WORK=$(mktemp -d /var/tmp/appliance-image.XXXXXX)
cleanup() {
    for m in dev/pts dev proc sys; do
        mountpoint -q "$WORK/root/$m" 2>/dev/null && umount -l "$WORK/root/$m"
    done
    rm -rf "$WORK"
}
trap cleanup EXIT

# --- 1. wheels -------------------------------------------------------------------------
PIP="$ROOT/.venv/bin/pip"
[[ -x $PIP ]] || die "$ROOT/.venv is missing: run scripts/setup.sh first (it makes the venv the wheels are built with)"
say "building the appliance wheel and its dependencies' wheels"
mkdir -p "$WORK/wheels"
if ((FOREIGN)); then
    # Foreign architecture: only our own (pure Python) wheel is used from here; the rest
    # are resolved here and fetched for $ARCH with the base (step 2).
    "$PIP" wheel -q --no-deps --wheel-dir "$WORK/wheels" "$ROOT" >&2
    "$PIP" wheel -q --wheel-dir "$WORK/resolve" "$ROOT" >&2
else
    "$PIP" wheel -q --wheel-dir "$WORK/wheels" "$ROOT" >&2
fi
APP_WHEEL=$(ls "$WORK"/wheels/appliance-*.whl)
# name==version of every dependency, from the wheel file names (PEP 427: name-version-...).
find "$WORK" -name '*.whl' ! -name 'appliance-*' -printf '%f\n' |
    awk -F- '{ print $1 "==" $2 }' | sort -u >"$WORK/requirements.txt"

# --- 2. base root filesystem (cached) --------------------------------------------------
KEY=$( {
    cat "$IMAGE/flavours/$FLAVOUR.sh" "$WORK/requirements.txt"
    printf '%s\n' "${PACKAGES[@]}" "base-v2"
} | sha256sum | cut -c1-16)
BASE="$CACHE/base-$FLAVOUR-$KEY.tar"
if [[ -f $BASE ]]; then
    say "base root filesystem: cached ($BASE)"
else
    say "base root filesystem: building with mmdebstrap ($FLAVOUR, $ARCH; a few minutes)"
    cp "$WORK/requirements.txt" "$WORK/wheels/requirements.txt"
    if ((FOREIGN)); then
        # The dependencies' wheels for $ARCH from PyPI, for the Python and glibc of this
        # machine (the same Debian release as the image, as the native build assumes):
        # pip under emulation would take many times longer. What has no such wheel
        # (systemd-python) comes as an sdist, built in the chroot (the hook below).
        py=$("$ROOT/.venv/bin/python" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
        glibc=$(getconf GNU_LIBC_VERSION | sed 's/.*\.//')
        platforms=()
        for ((v = 17; v <= glibc; v++)); do platforms+=(--platform "manylinux_2_${v}_${CPU}"); done
        say "fetching the dependencies' wheels for $ARCH (Python $py, glibc 2.$glibc)"
        "$PIP" download -q --no-deps --dest "$WORK/wheels" "${platforms[@]}" \
            --python-version "$py" --implementation cp --abi "cp${py/./}" --abi abi3 --abi none \
            -r "$WORK/requirements.txt" >&2
    fi
    site=()
    ((VENV_SYSTEM_SITE)) && site=(--system-site-packages)
    keyring=()
    [[ -n ${RPI_KEYRING:-} ]] && keyring=(--keyring="$RPI_KEYRING")
    # What the chroot needs to build the sdists among the wheels (foreign builds only).
    build_deps=""
    if compgen -G "$WORK/wheels/*.tar.gz" >/dev/null; then
        build_deps="gcc pkg-config python3-dev libsystemd-dev"
    fi
    mmdebstrap --mode=root --variant=minbase --architectures="$ARCH" "${keyring[@]}" \
        --include="$(IFS=,; echo "${PACKAGES[*]},${KERNEL_PACKAGES[*]}${FLAVOUR_PACKAGES[*]:+,${FLAVOUR_PACKAGES[*]}}")" \
        --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-include=/usr/share/doc/*/copyright' \
        --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/locale/*' \
        --dpkgopt='path-exclude=/usr/share/info/*' \
        --customize-hook="mkdir -p \"\$1/tmp/wheels\" && cp -a '$WORK/wheels/.' \"\$1/tmp/wheels/\"" \
        --customize-hook="chroot \"\$1\" python3 -m venv ${site[*]} /opt/appliance/.venv" \
        --customize-hook="${build_deps:+chroot \"\$1\" apt-get install -y -q $build_deps && }chroot \"\$1\" \
            /opt/appliance/.venv/bin/pip install -q --no-index --find-links /tmp/wheels -r /tmp/wheels/requirements.txt \
            ${build_deps:+&& chroot \"\$1\" apt-get purge -y -q --auto-remove $build_deps}" \
        --customize-hook='rm -rf "$1/tmp/wheels" "$1/root/.cache" "$1/var/cache/apt/archives/"*.deb "$1/var/lib/apt/lists/"*' \
        "$SUITE" "$WORK/base.tar" "${MIRRORS[@]}" >&2
    mv "$WORK/base.tar" "$BASE"
    # Older bases of this flavour are dead weight.
    find "$CACHE" -name "base-$FLAVOUR-*.tar" ! -name "$(basename "$BASE")" -delete
fi

# --- 3. layer the appliance ------------------------------------------------------------
say "layering the appliance $VERSION"
R="$WORK/root"
mkdir -p "$R"
tar -C "$R" -xpf "$BASE"
for m in proc sys dev dev/pts; do mount --bind "/$m" "$R/$m"; done
cp "$APP_WHEEL" "$R/tmp/"
chroot "$R" /opt/appliance/.venv/bin/pip install -q --no-deps --no-index "/tmp/$(basename "$APP_WHEEL")"
rm -f "$R/tmp/$(basename "$APP_WHEEL")"
# The page's third-party JS (npm, pinned in package-lock.json): only the dist folders.
for pkg in hls.js dashjs; do
    [[ -d $ROOT/node_modules/$pkg/dist ]] || die "node_modules/$pkg is missing: run scripts/setup.sh"
    mkdir -p "$R/opt/appliance/node_modules/$pkg"
    cp -a "$ROOT/node_modules/$pkg/dist" "$R/opt/appliance/node_modules/$pkg/"
done
# Units, users, tmpfiles of the appliance; then the image's own files.
install -m 644 "$ROOT"/systemd/*.service "$R/etc/systemd/system/"
for f in "$ROOT"/systemd/*.path "$ROOT"/systemd/*.timer; do
    [[ -e $f ]] && install -m 644 "$f" "$R/etc/systemd/system/"
done
install -m 644 "$ROOT/systemd/appliance.sysusers" "$R/usr/lib/sysusers.d/appliance.conf"
install -m 644 "$ROOT/systemd/appliance.tmpfiles" "$R/usr/lib/tmpfiles.d/appliance.conf"
cp -a "$IMAGE/rootfs/." "$R/"
rm -f "$R/etc/nginx/sites-enabled/default"
chroot "$R" systemd-sysusers
while read -r unit; do
    [[ -z $unit || $unit == \#* ]] && continue
    chroot "$R" systemctl enable "$unit" >&2
done <"$IMAGE/enable-units"
chroot "$R" systemctl mask apt-daily.timer apt-daily-upgrade.timer >&2 2>/dev/null || true
echo "$VERSION" >"$R/usr/lib/appliance-version"
printf 'appliance-%s\n' "$FLAVOUR" >"$R/usr/lib/appliance-compatible"
sed -i "s/^COMPATIBLE_PLACEHOLDER\$/compatible=appliance-$FLAVOUR/" "$R/etc/rauc/system.conf"
install -m 0644 "$KEYRING" "$R/etc/rauc/keyring.pem"

# Read-only root: /etc/hostname and the machine's writable state live on /data; /var is
# a tmpfs filled at each boot from a copy of the image's /var (tmpfiles 'C' lines).
ln -sf /data/etc/hostname "$R/etc/hostname"
rm -f "$R"/etc/ssh/ssh_host_*
: >"$R/etc/machine-id"
rm -rf "$R/usr/share/factory/var"
mkdir -p "$R/usr/share/factory"
mv "$R/var" "$R/usr/share/factory/var"
mkdir -p "$R/var"
# Depth 1: directories made empty, links re-made; depth 2: copied whole ('C' copies only
# what is missing), links re-made with their own (often relative) targets.
(cd "$R/usr/share/factory/var" && find . -mindepth 1 -maxdepth 2 -printf '%d %y %m %u %g %P\t%l\n' | sort -k6) |
    while IFS=$'\t' read -r head target; do
        read -r depth type mode user group path <<<"$head"
        if [[ $type == l ]]; then
            printf 'L /var/%s - - - - %s\n' "$path" "$target"
        elif ((depth == 1)) && [[ $type == d ]]; then
            printf 'd /var/%s %s %s %s -\n' "$path" "$mode" "$user" "$group"
        else
            printf 'C /var/%s - - - - /usr/share/factory/var/%s\n' "$path" "$path"
        fi
    done >"$R/usr/lib/tmpfiles.d/00-factory-var.conf"
mkdir -p "$R/data" "$R/boot/select" "$R/etc/appliance"
for m in dev/pts dev proc sys; do umount "$R/$m"; done

# --- 4. filesystems and disk -----------------------------------------------------------
say "making the filesystems and the disk image"
mkdir -p "$WORK/boot" "$WORK/bootsel" "$WORK/data"
if [[ $FLAVOUR == rpi ]]; then
    # What the Pi firmware boots: its own files, the kernels and initramfs the
    # raspi-firmware hooks put in /boot/firmware, and config.txt (image/rpi/).
    cp -a "$R/boot/firmware/." "$WORK/boot/"
    install -m 0644 "$IMAGE/rpi/config.txt" "$WORK/boot/config.txt"
else
    # tests/image/firmware.py (the QEMU stand-in for the Pi firmware) boots these names.
    cp "$(ls "$R"/boot/vmlinuz-* | sort -V | tail -1)" "$WORK/boot/vmlinuz"
    cp "$(ls "$R"/boot/initrd.img-* | sort -V | tail -1)" "$WORK/boot/initrd.img"
fi
echo "root=PARTLABEL=system_a ro rootwait rauc.slot=a $CMDLINE_EXTRA quiet" >"$WORK/boot/cmdline.txt"
printf '[all]\ntryboot_a_b=1\nboot_partition=2\n[tryboot]\nboot_partition=2\n' >"$WORK/bootsel/autoboot.txt"
cp "$IMAGE/appliance-setup.toml" "$WORK/bootsel/appliance-setup.toml.example" 2>/dev/null || true
# /data as first boot finds it; the bind mounts' sources must exist.
install -d -m 0755 "$WORK/data/etc" "$WORK/data/journal" "$WORK/data/rauc"
install -d -m 0700 "$WORK/data/nm" "$WORK/data/ssh"
APP_UID=$(chroot "$R" id -u appliance) APP_GID=$(chroot "$R" id -g appliance)
install -d -m 0750 -o "$APP_UID" -g "$APP_GID" "$WORK/data/config" "$WORK/data/state"
install -d -m 0700 -o "$APP_UID" -g "$APP_GID" "$WORK/data/tls"
echo appliance >"$WORK/data/etc/hostname"
# The flavour's first config (checked here, so a bad one fails the build, not the box).
"$ROOT/.venv/bin/appliance" check-config --board "$CONFIG_BOARD" "$IMAGE/flavours/$FLAVOUR.toml" >&2
install -m 0640 -o "$APP_UID" -g "$APP_GID" "$IMAGE/flavours/$FLAVOUR.toml" "$WORK/data/config/appliance.toml"

mkfs_vfat() { # DIR SIZE_MB OUT LABEL
    rm -f "$3"
    truncate -s "$2M" "$3"
    mkfs.vfat -n "$4" "$3" >/dev/null
    mcopy -s -i "$3" "$1"/* ::/
}
mkfs_vfat "$WORK/boot" "$BOOT_MB" "$OUT/boot.vfat" BOOT
mkfs_vfat "$WORK/bootsel" "$BOOTSEL_MB" "$WORK/bootsel.vfat" BOOTSEL
rm -f "$OUT/rootfs.ext4" "$WORK/data.ext4"
mke2fs -q -t ext4 -L system -d "$R" "$OUT/rootfs.ext4" "$(( $(du -sm "$R" | cut -f1) * 13 / 10 + 128 ))M"
mke2fs -q -t ext4 -L data -d "$WORK/data" "$WORK/data.ext4" "${DATA_MB}M"
e2fsck -fy "$OUT/rootfs.ext4" >/dev/null || true

# Slot b starts as a copy of a, booting its own root.
mkdir -p "$WORK/boot_b"
cp "$WORK/boot"/* "$WORK/boot_b/"
sed -i 's/system_a/system_b/; s/rauc.slot=a/rauc.slot=b/' "$WORK/boot_b/cmdline.txt"
mkfs_vfat "$WORK/boot_b" "$BOOT_MB" "$WORK/boot_b.vfat" BOOT

cat >"$WORK/genimage.cfg" <<EOF
image disk.img {
    hdimage { partition-table-type = "gpt" align = 1M }
    partition bootsel { image = "$WORK/bootsel.vfat" partition-type-uuid = "EBD0A0A2-B9E5-4433-87C0-68B6B72699C7" size = ${BOOTSEL_MB}M }
    partition boot_a { image = "$OUT/boot.vfat" partition-type-uuid = "EBD0A0A2-B9E5-4433-87C0-68B6B72699C7" size = ${BOOT_MB}M }
    partition boot_b { image = "$WORK/boot_b.vfat" partition-type-uuid = "EBD0A0A2-B9E5-4433-87C0-68B6B72699C7" size = ${BOOT_MB}M }
    partition system_a { image = "$OUT/rootfs.ext4" partition-type-uuid = "$ROOT_TYPE" size = ${SYSTEM_MB}M }
    partition system_b { image = "$OUT/rootfs.ext4" partition-type-uuid = "$ROOT_TYPE" size = ${SYSTEM_MB}M }
    partition data { image = "$WORK/data.ext4" partition-type-uuid = "0FC63DAF-8483-4772-8E79-3D69D8477DE4" size = ${DATA_MB}M }
}
EOF
rm -rf "$WORK/genimage-tmp"
genimage --config "$WORK/genimage.cfg" --rootpath "$WORK/bootsel" --tmppath "$WORK/genimage-tmp" \
    --inputpath "$WORK" --outputpath "$OUT" >&2
echo "$VERSION" >"$OUT/version"
say "done: $OUT/disk.img ($(du -h --apparent-size "$OUT/disk.img" | cut -f1), $(du -h "$OUT/disk.img" | cut -f1) on disk), boot.vfat, rootfs.ext4, version $VERSION"
