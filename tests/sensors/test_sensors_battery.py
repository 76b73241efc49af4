from __future__ import annotations

import pytest

from agent.sensors.battery import read_power_supplies
from agent.sensors.live import LiveSensors


def test_laptop_on_battery_energy_form_reports_percent_power_and_not_on_ac(fake):
    fake.battery_energy(energy_now=30_000_000, energy_full=60_000_000, power_now=12_500_000)
    fake.adapter("AC", online=0)
    bat, power, _notes = read_power_supplies(fake.sys)
    assert bat.present and bat.count == 1
    assert bat.percent == pytest.approx(50.0)
    assert bat.status == "Discharging"
    assert bat.power_w == pytest.approx(12.5)
    assert bat.energy_wh == pytest.approx(30.0) and bat.energy_full_wh == pytest.approx(60.0)
    assert power.on_ac is False and power.adapters == ("AC",)


def test_charging_laptop_charge_form_converts_with_voltage_and_reports_negative_power(fake):
    fake.battery_charge(charge_now=2_000_000, charge_full=4_000_000, current_now=1_500_000, voltage_now=12_000_000)
    fake.adapter("AC", online=1)
    bat, power, _ = read_power_supplies(fake.sys)
    assert bat.status == "Charging"
    assert bat.percent == pytest.approx(50.0)
    assert bat.energy_wh == pytest.approx(24.0)            # 2 Ah × 12 V
    assert bat.power_w == pytest.approx(-18.0)             # 1.5 A × 12 V into the battery
    assert power.on_ac is True


def test_charge_form_without_power_now_never_mixes_microamps_into_watts(fake):
    # psutil's bug: with no power_now it divides µWh by µA; we must use current × voltage
    fake.battery_charge(status="Discharging", current_now=800_000, voltage_now=11_000_000)
    bat, _, _ = read_power_supplies(fake.sys)
    assert bat.power_w == pytest.approx(8.8)


def test_desktop_without_battery_reports_nulls_and_reasons(fake):
    (fake.sys / "class" / "power_supply").mkdir(parents=True)
    bat, power, notes = read_power_supplies(fake.sys)
    assert bat.present is False and bat.percent is None and bat.status is None and bat.power_w is None
    assert power.on_ac is None
    assert "Battery" in (notes.get("battery") or "")
    assert notes.get("power.on_ac")


def test_desktop_with_only_a_mains_supply_is_on_ac(fake):
    fake.adapter("AC", online=1)
    bat, power, _ = read_power_supplies(fake.sys)
    assert bat.present is False and power.on_ac is True


def test_two_batteries_are_combined_by_energy(fake):
    fake.battery_energy("BAT0", energy_now=40_000_000, energy_full=50_000_000, power_now=6_000_000)
    fake.battery_energy("BAT1", energy_now=5_000_000, energy_full=20_000_000, power_now=4_000_000)
    bat, _, _ = read_power_supplies(fake.sys)
    assert bat.count == 2
    assert bat.percent == pytest.approx(100 * 45 / 70)
    assert bat.power_w == pytest.approx(10.0)
    assert bat.energy_full_wh == pytest.approx(70.0)


def test_one_battery_discharging_and_one_full_combine_to_discharging(fake):
    fake.battery_energy("BAT0", status="Full", power_now=0)
    fake.battery_energy("BAT1", status="Discharging")
    bat, _, _ = read_power_supplies(fake.sys)
    assert bat.status == "Discharging"


def test_adapter_named_adp1_is_found_by_its_type(fake):
    fake.battery_energy(status="Charging")
    fake.adapter("ADP1", online=1)
    _, power, _ = read_power_supplies(fake.sys)
    assert power.on_ac is True and power.adapters == ("ADP1",)


def test_usb_c_supply_with_any_name_counts_as_adapter(fake):
    fake.battery_energy()
    fake.adapter("ucsi-source-psy-USBC000:001", online=1, kind="USB")
    _, power, _ = read_power_supplies(fake.sys)
    assert power.on_ac is True


def test_peripheral_battery_with_device_scope_is_ignored(fake):
    fake.battery_energy("BAT0", energy_now=10_000_000, energy_full=50_000_000)
    fake.battery_energy("hidpp_battery_0", energy_now=1_000_000, energy_full=1_000_000, scope="Device")
    bat, _, _ = read_power_supplies(fake.sys)
    assert bat.count == 1 and bat.percent == pytest.approx(20.0)


def test_empty_battery_slot_is_ignored(fake):
    fake.battery_energy("BAT0")
    fake.battery_energy("BAT1", present=0)
    bat, _, _ = read_power_supplies(fake.sys)
    assert bat.count == 1


@pytest.mark.parametrize("bad", ["abc", "", "-5000000", "12.5"])
def test_malformed_energy_now_falls_back_to_capacity_with_a_reason(fake, bad):
    d = fake.battery_energy(capacity=42)
    (d / "energy_now").write_text(bad + "\n")
    bat, _, notes = read_power_supplies(fake.sys)
    assert bat.percent == pytest.approx(42.0)
    assert bat.energy_wh is None
    assert "energy_now" in (notes.get("battery.energy_wh") or "")


def test_power_now_that_is_a_directory_gives_null_power_and_a_reason(fake):
    fake.battery_energy()
    fake.make_unreadable("sys/class/power_supply/BAT0/power_now")
    bat, _, notes = read_power_supplies(fake.sys)
    assert bat.power_w is None
    assert "directory" in (notes.get("battery.power_w") or "")
    assert bat.percent == pytest.approx(50.0)


def test_unknown_status_text_becomes_unknown_with_a_reason(fake):
    fake.battery_energy(status="Exploding")
    bat, _, notes = read_power_supplies(fake.sys)
    assert bat.status == "Unknown"
    assert "Exploding" in (notes.get("battery.status") or "")


def test_capacity_above_100_is_rejected(fake):
    fake.supply("BAT0", type="Battery", status="Discharging", capacity=150)
    bat, _, notes = read_power_supplies(fake.sys)
    assert bat.percent is None and notes.get("battery.percent")


def test_unreadable_type_file_and_malformed_online_never_raise(fake):
    fake.make_unreadable("sys/class/power_supply/weird/type")
    fake.supply("AC", type="Mains", online="yes")
    bat, power, notes = read_power_supplies(fake.sys)
    assert bat.present is False and power.on_ac is None
    assert "AC" in (notes.get("power.on_ac") or "")


def test_missing_power_supply_class_reads_as_no_battery(fake):
    bat, power, notes = read_power_supplies(fake.sys)
    assert bat.present is False and power.on_ac is None and notes.get("battery")


def test_live_snapshot_carries_battery_reasons_into_snapshot(fake):
    fake.desktop_basics()
    snap = LiveSensors(fake.sys, fake.proc, nvml=False).read()
    reasons = dict(snap.reasons)
    assert snap.battery.percent is None and "battery" in reasons
