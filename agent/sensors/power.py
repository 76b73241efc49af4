"""Power and energy meters: RAPL, NVML (optional), amdgpu hwmon, NPU busy time.

* **RAPL**: ``<sysfs>/class/powercap/intel-rapl:N`` (top-level domains only: ``package-N``, ``psys``;
  sub-domains ``intel-rapl:N:M`` such as ``core``/``dram`` are inside the package). ``energy_uj`` wraps
  at ``max_energy_range_uj``: a reading lower than the previous one adds ``max − prev + new``. The
  reader accumulates joules since it started. When a ``psys`` (whole platform) domain exists it is used
  alone, otherwise the packages are summed. Since Linux 5.10 ``energy_uj`` is readable by root only.
* **NVML** through ``nvidia-ml-py`` (module ``pynvml``) when installed: power, temperature, utilisation
  and total energy of GPU 0. A missing library or driver is remembered, so it is tried once.
* **amdgpu**: ``<sysfs>/class/drm/card*/device/hwmon/hwmon*/power1_average`` (or ``power1_input``), µW.
* **NPU**: ``<sysfs>/class/accel/accel*/device/npu_busy_time_us`` (Linux ≥ 6.11), summed, in seconds.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.sensors._io import Notes, list_dir, natural_key, read_int, read_str

log = logging.getLogger(__name__)


@dataclass
class _Domain:
    path: Path
    name: str
    max_uj: int | None
    last_uj: int | None = None
    total_j: float = 0.0


class RaplReader:
    """Accumulates wrap-corrected RAPL energy of the top-level domains."""

    def __init__(self, sysfs_root: str | Path = "/sys") -> None:
        self.base = Path(sysfs_root) / "class" / "powercap"
        self.domains: list[_Domain] | None = None

    def _discover(self) -> list[_Domain]:
        found: list[_Domain] = []
        for entry in sorted(list_dir(self.base), key=natural_key):
            if not entry.startswith("intel-rapl:") or entry.count(":") != 1:
                continue
            d = self.base / entry
            name, _ = read_str(d / "name")
            mx, _ = read_int(d / "max_energy_range_uj")
            found.append(_Domain(d, name or entry, mx or None))
        psys = [x for x in found if x.name.startswith("psys")]
        return psys or found

    def read(self, notes: Notes) -> float | None:
        """Joules since the first read (0.0 on the first successful read), or None with a reason."""
        if self.domains is None:
            self.domains = self._discover()
        if not self.domains:
            notes.add("energy.rapl", "no intel-rapl powercap domains" if self.base.exists()
                      else f"missing {self.base}")
            return None
        total = 0.0
        for dom in self.domains:
            uj, why = read_int(dom.path / "energy_uj")
            if uj is None:
                if why and "permission" in why:
                    why += " (RAPL is root-only since Linux 5.10)"
                notes.add("energy.rapl", why)
                return None
            if dom.max_uj is not None and uj > dom.max_uj:
                notes.add("energy.rapl", f"malformed {dom.path / 'energy_uj'}: {uj} > max_energy_range_uj")
                return None
            if dom.last_uj is not None:
                if uj >= dom.last_uj:
                    dom.total_j += (uj - dom.last_uj) / 1e6
                elif dom.max_uj:
                    dom.total_j += (dom.max_uj - dom.last_uj + uj) / 1e6
                # a decrease without a known range: counter reset; count nothing for this step
            dom.last_uj = uj
            total += dom.total_j
        return total


class NvmlReader:
    """GPU 0 through NVML; tries the library once and remembers why it is absent."""

    def __init__(self) -> None:
        self._nv: Any = None
        self._handle: Any = None
        self._why: str | None = None
        self._tried = False

    def _init(self) -> None:
        self._tried = True
        try:
            import pynvml  # type: ignore[import-not-found]
        except ImportError:
            self._why = "nvidia-ml-py not installed"
            return
        try:
            pynvml.nvmlInit()
            self._handle = pynvml.nvmlDeviceGetHandleByIndex(0)
            self._nv = pynvml
        except Exception as e:  # noqa: BLE001 - every NVMLError_* (LibraryNotFound, DriverNotLoaded ...)
            self._why = f"NVML unavailable: {e}"

    def read(self, notes: Notes) -> dict[str, float | None]:
        if not self._tried:
            self._init()
        out: dict[str, float | None] = {"power_w": None, "temp_c": None, "util": None, "joules": None}
        if self._nv is None:
            notes.add("energy.gpu", self._why)
            return out
        nv, h = self._nv, self._handle
        calls = {
            "power_w": lambda: nv.nvmlDeviceGetPowerUsage(h) / 1000.0,
            "temp_c": lambda: float(nv.nvmlDeviceGetTemperature(h, nv.NVML_TEMPERATURE_GPU)),
            "util": lambda: float(nv.nvmlDeviceGetUtilizationRates(h).gpu),
            "joules": lambda: nv.nvmlDeviceGetTotalEnergyConsumption(h) / 1000.0,
        }
        for key, fn in calls.items():
            try:
                out[key] = fn()
            except Exception as e:  # noqa: BLE001 - NVMLError_NotSupported and friends
                notes.add(f"energy.gpu_{key}", f"NVML: {e}")
        return out

    def close(self) -> None:
        if self._nv is not None:
            try:
                self._nv.nvmlShutdown()
            except Exception as e:  # noqa: BLE001 - shutting down; nothing to recover
                log.debug("nvmlShutdown failed: %s", e)
            self._nv = None


def read_amdgpu_power(sysfs_root: str | Path, notes: Notes) -> float | None:
    """Sum of amdgpu ``power1_average``/``power1_input`` in W, or None."""
    drm = Path(sysfs_root) / "class" / "drm"
    watts: list[float] = []
    for card in list_dir(drm):
        if not card.startswith("card") or not card[4:].isdigit():
            continue
        hw = drm / card / "device" / "hwmon"
        for h in list_dir(hw):
            for fname in ("power1_average", "power1_input"):
                p = hw / h / fname
                if p.exists():
                    uw, why = read_int(p)
                    if uw is None:
                        notes.add("energy.gpu_power_w", why)
                    else:
                        watts.append(uw / 1e6)
                    break
    return sum(watts) if watts else None


def read_npu_busy(sysfs_root: str | Path, notes: Notes) -> float | None:
    accel = Path(sysfs_root) / "class" / "accel"
    total: float | None = None
    for dev in list_dir(accel):
        p = accel / dev / "device" / "npu_busy_time_us"
        if p.exists():
            us, why = read_int(p)
            if us is None:
                notes.add("energy.npu_busy_s", why)
                continue
            total = (total or 0.0) + us / 1e6
    if total is None:
        notes.add("energy.npu_busy_s", "no /sys/class/accel device with npu_busy_time_us")
    return total
