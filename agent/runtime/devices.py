"""Execution devices through ONNX Runtime's EP-device API.

``discover()`` registers the plugin execution providers that are installed as Python packages (their
libraries are found by import, never by a path from a client), then lists ``ort.get_ep_devices()`` as
:class:`Device` records. ``select(spec)`` turns a user's choice (``cpu``, ``gpu``, ``npu`` or a provider
name like ``OpenVINOExecutionProvider``, optionally ``PROVIDER:cpu``) into one device, or raises
:class:`NotFound` naming what exists: a variant is never placed on another device silently.
"""

from __future__ import annotations

import importlib
import logging
from dataclasses import dataclass
from typing import Any

from agent.errors import NotFound

log = logging.getLogger(__name__)

# (python module, function returning the library path, function returning the EP name)
PLUGIN_EPS: tuple[tuple[str, str, str], ...] = (
    ("onnxruntime_ep_openvino", "get_library_path", "get_ep_name"),
    ("onnxruntime_ep_webgpu", "get_library_path", "get_ep_name"),
    ("onnxruntime_qnn", "get_library_path", "get_ep_name"),
    ("onnxruntime_ep_nv_tensorrt_rtx", "get_library_path", "get_ep_name"),
)

_registered: dict[str, str] = {}


@dataclass(frozen=True)
class Device:
    kind: str          # cpu | gpu | npu
    provider: str      # EP name
    vendor: str
    device_id: int
    index: int         # position in get_ep_devices()

    @property
    def label(self) -> str:
        return f"{self.kind}:{self.provider}"

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "provider": self.provider, "vendor": self.vendor,
                "device_id": self.device_id, "label": self.label}


def register_plugins() -> dict[str, str]:
    """Register every installed plugin EP once per process. Returns {ep name: status}."""
    import onnxruntime as ort

    for mod_name, lib_fn, name_fn in PLUGIN_EPS:
        if any(k.startswith(mod_name) for k in _registered):
            continue
        try:
            mod = importlib.import_module(mod_name)
        except ImportError:
            continue
        try:
            ep_name = getattr(mod, name_fn)() if hasattr(mod, name_fn) else mod_name
            ort.register_execution_provider_library(ep_name, getattr(mod, lib_fn)())
            _registered[f"{mod_name}:{ep_name}"] = "registered"
        except Exception as e:  # an EP library that fails to load must not take the process down
            _registered[f"{mod_name}"] = f"failed: {e}"
            log.warning("plugin EP %s failed to register: %s", mod_name, e)
    return dict(_registered)


def _kind(hw_type: Any) -> str:
    name = str(hw_type).rsplit(".", 1)[-1].lower()
    return name if name in ("cpu", "gpu", "npu") else "cpu"


def discover(register: bool = True) -> list[Device]:
    import onnxruntime as ort

    if register:
        register_plugins()
    out = []
    for i, d in enumerate(ort.get_ep_devices()):
        out.append(Device(kind=_kind(d.device.type), provider=d.ep_name, vendor=str(d.device.vendor),
                          device_id=int(d.device.device_id), index=i))
    return out


def select(spec: str, devices: list[Device]) -> Device:
    """The one device named by ``spec``; never a silent substitute."""
    spec = (spec or "cpu").strip()
    want_kind: str | None = None
    want_provider: str | None = None
    if spec.lower() in ("cpu", "gpu", "npu"):
        want_kind = spec.lower()
    elif ":" in spec:
        p, k = spec.split(":", 1)
        want_provider, want_kind = p, k.lower()
    else:
        want_provider = spec
    matches = [d for d in devices
               if (want_kind is None or d.kind == want_kind)
               and (want_provider is None or d.provider == want_provider)]
    if want_kind == "cpu" and want_provider is None:
        # plain "cpu" means ONNX Runtime's own CPU EP, not a plugin that also drives the CPU
        cpu_ep = [d for d in matches if d.provider == "CPUExecutionProvider"]
        matches = cpu_ep or matches
    if not matches:
        have = ", ".join(sorted({d.label for d in devices})) or "none"
        raise NotFound(f"no device matches {spec!r}; available: {have}")
    return matches[0]
