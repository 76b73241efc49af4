"""The first-run demo (`agentctl demo`, scripts/demo): start agentd, drive it, record, show, plot."""
