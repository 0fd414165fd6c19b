# ci-amd64: Debian only, built natively, booted in QEMU by the tests (tests/image/).
ARCH=amd64
SUITE=bookworm
MIRRORS=("deb http://deb.debian.org/debian bookworm main" "deb http://deb.debian.org/debian-security bookworm-security main" "deb http://deb.debian.org/debian bookworm-updates main")
# The cloud flavour: drivers for virtual machines only (a third of the modules).
KERNEL_PACKAGES=(linux-image-cloud-amd64)
FLAVOUR_PACKAGES=()
# The QEMU "firmware" (tests/image/firmware.py) boots the kernel, initrd and cmdline.txt of
# the boot partition autoboot.txt selects; ttyS0 is the serial log the tests keep.
CMDLINE_EXTRA="console=ttyS0,115200 net.ifnames=0"
CONFIG_BOARD=generic
