"""Remote fleet monitoring: the device's MQTT agent (agent.py), the commands it runs
(commands.py), the fleet's desired config (desired_config.py) and telemetry (telemetry.py)."""
