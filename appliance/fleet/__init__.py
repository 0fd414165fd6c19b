"""Remote fleet monitoring: the device's MQTT agent (agent.py, telemetry.py)."""
