"""Provisioning a device: the first-boot settings file (firstboot.py) and the HTTPS
front's certificate (tls.py)."""
