"""ondevice-agent: an adaptive on-device inference agent.

The loop (see docs/ARCHITECTURE.md): sensors -> Snapshot -> policy.decide() -> Decision ->
runtime.apply() (load, warm up, switch, drain), while the IPC server serves apps from the active variant.
Nothing here does work at import time.
"""

__version__ = "0.1.0"
