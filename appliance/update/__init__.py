"""Signed A/B updates with RAUC (issue 8).

- `tryboot`: RAUC's custom bootloader backend for the Raspberry Pi firmware's tryboot
  (autoboot.txt on the boot selection partition), and the reboot into a trial boot.
- `handlers`: RAUC's system-side pre-install (refuses older versions) and post-install
  (points the new boot slot's cmdline.txt at its own system slot) handlers.
- `health`: the checks ordered before boot-complete.target (`appliance health`).
- `installer`: installs an uploaded or downloaded bundle through RAUC's D-Bus service,
  with progress in the status hub's `update` section; `api` serves it on the web.
"""
