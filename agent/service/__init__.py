"""agentd as a systemd service: notify/watchdog/socket activation (systemd.py) and `agentctl service` (cli.py)."""
