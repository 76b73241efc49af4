from __future__ import annotations

import math

import pytest

from agent.errors import InvalidParams
from agent.sensors._io import Notes
from agent.sensors.energy import (
    DEFAULT_WATTS_PER_BUSY_CORE,
    EnergyAccountant,
    EnergyMeter,
    EnergyReading,
)
from agent.sensors.live import LiveSensors
from agent.sensors.power import RaplReader, read_amdgpu_power, read_npu_busy
from agent.sensors.trace import load_trace, shipped

MAX = 1_000_000_000   # 1 kJ range, in µJ


def test_rapl_counter_that_wraps_adds_the_remaining_range(fake):
    fake.rapl(0, MAX - 1_000_000, max_uj=MAX)
    r = RaplReader(fake.sys)
    assert r.read(Notes()) == 0.0
    fake.rapl(0, 1_000_000, max_uj=MAX)            # wrapped: 1 J before the top + 1 J after
    assert r.read(Notes()) == pytest.approx(2.0)
    fake.rapl(0, 4_000_000, max_uj=MAX)
    assert r.read(Notes()) == pytest.approx(5.0)


def test_rapl_sums_packages_but_prefers_psys(fake):
    fake.rapl(0, 0)
    fake.rapl(1, 0)
    fake.write("sys/class/powercap/intel-rapl:0:0/energy_uj", 0)   # a sub-domain: inside the package
    r = RaplReader(fake.sys)
    r.read(Notes())
    fake.rapl(0, 3_000_000)
    fake.rapl(1, 2_000_000)
    fake.write("sys/class/powercap/intel-rapl:0:0/energy_uj", 9_000_000)
    assert r.read(Notes()) == pytest.approx(5.0)
    fake.rapl(2, 0, name="psys")
    r2 = RaplReader(fake.sys)
    r2.read(Notes())
    fake.rapl(2, 7_000_000, name="psys")
    assert r2.read(Notes()) == pytest.approx(7.0)


def test_unreadable_or_impossible_rapl_is_null_with_reason(fake):
    fake.rapl(0, 5, max_uj=MAX)
    fake.make_unreadable("sys/class/powercap/intel-rapl:0/energy_uj")
    notes = Notes()
    assert RaplReader(fake.sys).read(notes) is None
    assert "directory" in (notes.get("energy.rapl") or "")
    fake2 = fake.sys / "class" / "powercap" / "intel-rapl:0"
    (fake2 / "energy_uj").rmdir()
    (fake2 / "energy_uj").write_text(f"{MAX + 5}\n")
    notes = Notes()
    assert RaplReader(fake.sys).read(notes) is None and "max_energy_range" in (notes.get("energy.rapl") or "")


def test_live_rapl_meter_gives_power_from_two_reads(fake, clock):
    fake.desktop_basics()
    fake.rapl(0, MAX - 5_000_000, max_uj=MAX)
    live = LiveSensors(fake.sys, fake.proc, nvml=False, clock=clock)
    first = live.read()
    assert first.energy.meter == "rapl" and first.energy.power_w is None
    clock.advance(2.0)
    fake.rapl(0, 15_000_000, max_uj=MAX)          # 20 J across the wrap in 2 s
    second = live.read()
    assert second.energy.meter == "rapl"
    assert second.energy.power_w == pytest.approx(10.0)
    assert second.energy.joules_total == pytest.approx(20.0)


def test_battery_meter_integrates_discharge_power_when_no_rapl(fake, clock):
    fake.desktop_basics()
    fake.battery_energy(power_now=10_000_000)
    live = LiveSensors(fake.sys, fake.proc, nvml=False, clock=clock)
    assert live.read().energy.meter == "battery"
    clock.advance(3.0)
    fake.battery_energy(power_now=14_000_000)
    snap = live.read()
    assert snap.energy.meter == "battery" and snap.energy.power_w == pytest.approx(14.0)
    assert snap.energy.joules_total == pytest.approx(36.0)        # trapezoid (10+14)/2 × 3 s


def test_rapl_wins_over_battery_and_charging_battery_is_no_meter(fake):
    fake.desktop_basics()
    fake.battery_energy(status="Charging")
    snap = LiveSensors(fake.sys, fake.proc, nvml=False).read()
    assert snap.energy.meter is None and dict(snap.reasons).get("energy.meter")
    fake.rapl(0, 0)
    assert LiveSensors(fake.sys, fake.proc, nvml=False).read().energy.meter == "rapl"


def test_amdgpu_power_and_npu_busy_time_are_read(fake):
    fake.write("sys/class/drm/card0/device/hwmon/hwmon3/power1_average", 35_500_000)
    fake.write("sys/class/accel/accel0/device/npu_busy_time_us", 2_500_000)
    notes = Notes()
    assert read_amdgpu_power(fake.sys, notes) == pytest.approx(35.5)
    assert read_npu_busy(fake.sys, notes) == pytest.approx(2.5)
    fake.desktop_basics()
    snap = LiveSensors(fake.sys, fake.proc, nvml=False).read()
    assert snap.energy.meter == "amdgpu" and snap.energy.gpu_power_w == pytest.approx(35.5)
    assert snap.energy.npu_busy_s == pytest.approx(2.5)


def test_malformed_gpu_and_npu_files_are_null_with_reasons(fake):
    fake.write("sys/class/drm/card0/device/hwmon/hwmon0/power1_average", "abc")
    fake.write("sys/class/accel/accel0/device/npu_busy_time_us", "-4")
    notes = Notes()
    assert read_amdgpu_power(fake.sys, notes) is None and notes.get("energy.gpu_power_w")
    assert read_npu_busy(fake.sys, notes) is None and "below" in (notes.get("energy.npu_busy_s") or "")


# ------------------------------------------------------------------------------------- accounting

def R(t: float, meter: str | None, j: float | None, busy: float | None, p: float | None = None) -> EnergyReading:
    return EnergyReading(mono_s=t, meter=meter, joules_total=j, power_w=p, busy_s_total=busy)


def test_rapl_joules_are_shared_by_the_workers_part_of_busy_cpu():
    acct = EnergyAccountant()
    # 10 W for 1 s; two cores busy on average; the request used 0.5 CPU-s of them
    joules, meter = acct.joules(cpu_s=0.5, wall_s=1.0, start=R(0, "rapl", 100.0, 50.0), end=R(1, "rapl", 110.0, 52.0))
    assert meter == "rapl" and joules == pytest.approx(10.0 * 0.5 / 2.0)


def test_request_alone_on_the_cpu_gets_all_the_metered_energy():
    acct = EnergyAccountant()
    joules, meter = acct.joules(0.8, 1.0, R(0, "rapl", 0.0, 10.0), R(1, "rapl", 12.0, 10.8))
    assert meter == "rapl" and joules == pytest.approx(12.0)


def test_battery_meter_uses_mean_power_over_wall_time():
    acct = EnergyAccountant()
    joules, meter = acct.joules(0.2, 0.2, R(0, "battery", None, None, 8.0), R(0.2, "battery", None, None, 12.0))
    assert meter == "battery" and joules == pytest.approx(10.0 * 0.2)


def test_gpu_meter_adds_gpu_power_to_the_cpu_model():
    acct = EnergyAccountant(watts_per_busy_core=4.0)
    joules, meter = acct.joules(0.5, 2.0, R(0, "nvml", None, None, 50.0), R(2, "nvml", None, None, 50.0))
    assert meter == "nvml" and joules == pytest.approx(50.0 * 2.0 + 0.5 * 4.0)


def test_no_meter_or_a_meter_change_falls_back_to_the_model():
    acct = EnergyAccountant()
    assert acct.joules(2.0, 3.0, R(0, None, None, 1.0), R(3, None, None, 3.0)) == (
        pytest.approx(2.0 * DEFAULT_WATTS_PER_BUSY_CORE), "model")
    assert acct.joules(1.0, 1.0, R(0, "rapl", 1.0, 0.0), R(1, "battery", None, 1.0, 5.0))[1] == "model"


def test_counter_that_went_backwards_is_not_trusted():
    acct = EnergyAccountant()
    assert acct.joules(1.0, 1.0, R(0, "rapl", 50.0, 0.0), R(1, "rapl", 10.0, 1.0))[1] == "model"


@pytest.mark.parametrize("cpu_s, wall_s", [(-1.0, 1.0), (1.0, math.nan), (math.inf, 1.0), ("1", 1.0)])
def test_bad_cpu_or_wall_time_is_invalid_params(cpu_s, wall_s):
    with pytest.raises(InvalidParams):
        EnergyAccountant().joules(cpu_s, wall_s, R(0, None, None, None), R(1, None, None, None))


def test_calibration_learns_watts_per_busy_core_from_a_meter():
    acct = EnergyAccountant()
    busy, joules, t = 0.0, 0.0, 0.0
    prev = R(t, "rapl", joules, busy)
    for cores in [0.2, 1.5, 3.0, 0.5, 2.5, 4.0]:
        t += 1.0
        busy += cores
        joules += 6.0 + 9.0 * cores                 # idle 6 W + 9 W per busy core
        cur = R(t, "rapl", joules, busy)
        acct.calibrate(prev, cur)
        prev = cur
    assert acct.watts_per_busy_core == pytest.approx(9.0) and acct.calibrated_from == "rapl"
    assert acct.joules(1.0, 1.0, R(0, None, None, None), R(1, None, None, None)) == (pytest.approx(9.0), "model")


def test_calibration_ignores_intervals_without_a_meter_or_spread():
    acct = EnergyAccountant()
    for i in range(5):
        assert acct.calibrate(R(i, "rapl", i * 10.0, i * 1.0), R(i + 1, "rapl", i * 10.0 + 10, i + 1.0)) is None
    assert acct.calibrate(R(0, None, None, 0.0), R(1, None, None, 1.0)) is None
    assert acct.watts_per_busy_core == DEFAULT_WATTS_PER_BUSY_CORE


def test_energy_meter_reads_rapl_from_a_fake_tree(fake, clock):
    fake.desktop_basics()
    fake.rapl(0, 1_000_000)
    meter = EnergyMeter(fake.sys, fake.proc, nvml=False, clock=clock)
    a = meter.read()
    fake.rapl(0, 4_000_000)
    fake.stat(user=150, system=50, idle=1000)     # +50 ticks busy = 0.5 s at 100 Hz
    clock.advance(1.0)
    b = meter.read()
    assert a.meter == b.meter == "rapl"
    joules, which = EnergyAccountant().joules(0.25, 1.0, a, b)
    assert which == "rapl" and joules == pytest.approx(3.0 * 0.25 / 0.5, rel=0.05)


def test_energy_meter_without_any_meter_reads_none(fake):
    fake.desktop_basics()
    r = EnergyMeter(fake.sys, fake.proc, nvml=False).read()
    assert r.meter is None and r.busy_s_total is not None


def test_accountant_takes_snapshots_from_a_trace():
    tr = load_trace(shipped("laptop_workday"))
    a, b = tr.snapshots[1], tr.snapshots[2]
    assert a.energy.meter == b.energy.meter == "battery"
    joules, which = EnergyAccountant().joules(30.0, 60.0, a, b)
    assert which == "battery" and joules > 0


def test_nvml_without_library_or_gpu_gives_nulls_with_a_reason_and_is_tried_once():
    from agent.sensors.power import NvmlReader

    r = NvmlReader()
    notes = Notes()
    out = r.read(notes)
    if out["power_w"] is None:          # no nvidia-ml-py, or no driver/GPU (this build machine)
        assert out == {"power_w": None, "temp_c": None, "util": None, "joules": None}
        why = notes.get("energy.gpu") or ""
        assert "not installed" in why or "NVML unavailable" in why
        r.read(Notes())
        assert r._tried and r._nv is None
    r.close()
    r.close()
