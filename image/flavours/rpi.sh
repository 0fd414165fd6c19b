# rpi: production image for Raspberry Pi 4/5. Debian plus the Raspberry Pi OS archive,
# the only source of the Pi kernel, firmware (start4.elf, tryboot), libcamera and
# picamera2. The venv sees the system site-packages so picamera2 comes from there.
ARCH=arm64
SUITE=bookworm
MIRRORS=("deb http://deb.debian.org/debian bookworm main non-free-firmware" "deb http://deb.debian.org/debian-security bookworm-security main" "deb http://deb.debian.org/debian bookworm-updates main" "deb http://archive.raspberrypi.com/debian bookworm main")
# The archive's signing key comes from raspberrypi-archive-keyring (built into the
# keyring given to mmdebstrap: RPI_KEYRING below).
RPI_KEYRING=/usr/share/keyrings/raspberrypi-archive-keyring.gpg
KERNEL_PACKAGES=(linux-image-rpi-v8 linux-image-rpi-2712 raspi-firmware)
FLAVOUR_PACKAGES=(python3-picamera2 rpicam-apps-lite wireless-regdb wpasupplicant firmware-brcm80211)
CMDLINE_EXTRA="console=serial0,115200"
VENV_SYSTEM_SITE=1
CONFIG_BOARD=pi4
