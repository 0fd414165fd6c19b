# ci-arm64: Debian only, arm64 under emulation (qemu-user-static + binfmt for the
# chroot steps, qemu-system-aarch64 -M virt to boot). Slow: outside the default run.
ARCH=arm64
SUITE=bookworm
MIRRORS=("deb http://deb.debian.org/debian bookworm main" "deb http://deb.debian.org/debian-security bookworm-security main" "deb http://deb.debian.org/debian bookworm-updates main")
KERNEL_PACKAGES=(linux-image-arm64)
# Wi-Fi as on rpi (NetworkManager drives Wi-Fi through wpa_supplicant): the slow setup
# access point test gives the guest mac80211_hwsim radios.
FLAVOUR_PACKAGES=(wpasupplicant wireless-regdb)
CMDLINE_EXTRA="console=ttyAMA0,115200 net.ifnames=0"
CONFIG_BOARD=generic
