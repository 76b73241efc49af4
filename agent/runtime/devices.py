"""Execution devices through ONNX Runtime's EP-device API.

``discover()`` registers the plugin execution providers that are installed as Python packages (their
libraries are found by import, never by a path from a client), then lists ``ort.get_ep_devices()`` as
:class:`Device` records. ``select(spec)`` turns a user's choice (``cpu``, ``gpu``, ``npu`` or a provider
name like ``OpenVINOExecutionProvider``, optionally ``PROVIDER:cpu``) into one device, or raises
:class:`NotFound` naming what exists: a variant is never placed on another device silently.

Two placements are not one EP device: ``remote`` (a KServe-v2 inference server, :mod:`agent.runtime.remote`)
and ``split`` (a variant cut into parts, each part naming its own device in the manifest). The daemon
checks every pin and policy choice with :func:`check_placement` before anything loads.

GPU/NPU EPs are declared in :data:`PREFERRED`: ``gpu`` picks CUDA (the ``gpu`` extra, onnxruntime-gpu),
then TensorRT-RTX, DirectML, WebGPU, OpenVINO's GPU; ``npu`` picks QNN, OpenVINO's NPU, VitisAI. Each is
used only when ``get_ep_devices()`` lists a device for it.
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

# which provider a plain "gpu" / "npu" means when several list such a device (first present wins)
PREFERRED: dict[str, tuple[str, ...]] = {
    "gpu": ("CUDAExecutionProvider", "NvTensorRTRTXExecutionProvider", "DmlExecutionProvider",
            "WebGpuExecutionProvider", "OpenVINOExecutionProvider"),
    "npu": ("QNNExecutionProvider", "OpenVINOExecutionProvider", "VitisAIExecutionProvider"),
}
REMOTE = "remote"
SPLIT = "split"

_registered: dict[str, str] = {}
_cache: list[Device] | None = None


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
        except Exception as e:  # noqa: BLE001 - an EP library that fails to load must not take the process down
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
    elif want_kind in PREFERRED and want_provider is None:
        order = PREFERRED[want_kind]
        matches.sort(key=lambda d: order.index(d.provider) if d.provider in order else len(order))
    if not matches:
        raise NotFound(f"no device matches {spec!r}; available: {describe(devices)}",
                       data={"available": [d.to_dict() for d in devices]})
    return matches[0]


def describe(devices: list[Device]) -> str:
    """``cpu:CPUExecutionProvider, gpu:CUDAExecutionProvider`` (what a refusal lists)."""
    return ", ".join(sorted({d.label for d in devices})) or "none"


def available(refresh: bool = False) -> list[Device]:
    """The devices of this process's ONNX Runtime, discovered once (plugins registered on first use)."""
    global _cache
    if _cache is None or refresh:
        _cache = discover()
    return list(_cache)


def check_placement(spec: str, natural: str, devices: list[Device]) -> str:
    """The placement string to use for a variant whose own kind is ``natural`` (``remote``, ``split`` or
    ``cpu`` for a plain ONNX file); ``spec`` empty means ``natural``. Raises NotFound naming what exists."""
    spec = (spec or natural).strip()
    if natural in (REMOTE, SPLIT):
        if spec != natural:
            raise NotFound(f"this variant runs on {natural!r} (its placement is in the manifest), not {spec!r}")
        return spec
    if spec in (REMOTE, SPLIT):
        raise NotFound(f"device {spec!r} is for remote/split variants; this one runs on an EP device "
                       f"(available: {describe(devices)})")
    select(spec, devices)
    return spec


def providers_ran(info: dict[str, Any]) -> list[str]:
    """The providers that were assigned nodes (from the recorded graph assignment), else the session's."""
    ran = [p for p, n in (info.get("assignment") or {}).items() if n]
    return sorted(ran) if ran else list(info.get("providers") or [])

