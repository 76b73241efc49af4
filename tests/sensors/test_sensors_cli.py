from __future__ import annotations

import json

import pytest

from agent.sensors.cli import FIELDS, main, parse_duration
from agent.sensors.trace import load_trace, shipped


def test_sensors_json_prints_every_required_field(fake, capsys):
    fake.desktop_basics()
    fake.battery_energy(energy_now=15_000_000, energy_full=60_000_000, power_now=9_000_000)
    fake.adapter("ADP1", online=0)
    fake.zone(0, 88.0, (("passive", 85.0), ("critical", 100.0)))
    rc = main(["sensors", "--sysfs-root", str(fake.sys), "--procfs-root", str(fake.proc), "--json"])
    assert rc == 0
    out = json.loads(capsys.readouterr().out)
    assert set(FIELDS) <= set(out)
    assert out["battery.percent"] == pytest.approx(25.0)
    assert out["battery.status"] == "Discharging" and out["battery.power_w"] == pytest.approx(9.0)
    assert out["power.on_ac"] is False
    assert out["thermal.level"] == "severe" and out["thermal.max_c"] == pytest.approx(88.0)
    assert out["memory.available_bytes"] == 5_000_000 * 1024 and out["memory.psi_some_avg10"] == 0.0
    assert out["cpu.load_1m"] == pytest.approx(0.42) and out["energy.meter"] == "battery"


def test_sensors_on_an_empty_tree_prints_nulls_and_reasons(fake, capsys):
    assert main(["sensors", "--sysfs-root", str(fake.sys), "--procfs-root", str(fake.proc), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert all(out[k] is None for k in FIELDS)
    assert out["reasons"]["battery"] and out["reasons"]["energy.meter"]


def test_sensors_human_output_names_fields_and_nulls(fake, capsys):
    assert main(["sensors", "--sysfs-root", str(fake.sys), "--procfs-root", str(fake.proc)]) == 0
    text = capsys.readouterr().out
    assert "battery.percent" in text and "null" in text and "unknown because:" in text


def test_sensors_from_a_trace(capsys):
    assert main(["sensors", "--sensors", f"trace:{shipped('thermal_sustained_load')}", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["energy.meter"] == "rapl" and out["power.on_ac"] is True


def test_bad_sensor_spec_exits_2_with_a_message(capsys):
    assert main(["sensors", "--sensors", "bogus"]) == 2
    assert "expected 'live'" in capsys.readouterr().err


@pytest.mark.parametrize("text, seconds", [("10m", 600.0), ("30s", 30.0), ("1.5h", 5400.0), ("250ms", 0.25),
                                           ("45", 45.0)])
def test_durations_parse(text, seconds):
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("bad", ["10x", "", "-5s", "0s", "m", "1e3s", "ten minutes"])
def test_bad_duration_exits_2_with_a_clear_error(bad, tmp_path, capsys):
    with pytest.raises(SystemExit) as ei:
        main(["trace", "record", f"--duration={bad}", str(tmp_path / "x.jsonl")])
    assert ei.value.code == 2
    assert "invalid duration" in capsys.readouterr().err
    assert not (tmp_path / "x.jsonl").exists()


def test_trace_record_writes_a_loadable_trace(fake, tmp_path, capsys):
    fake.desktop_basics()
    fake.battery_energy()
    out = tmp_path / "rec.jsonl"
    rc = main(["trace", "record", "--duration", "200ms", "--interval", "100ms", "--sysfs-root", str(fake.sys),
               "--procfs-root", str(fake.proc), str(out)])
    assert rc == 0 and "recorded 3 samples" in capsys.readouterr().out
    tr = load_trace(out)
    assert len(tr.snapshots) == 3 and tr.snapshots[0].battery.percent == pytest.approx(50.0)
    assert tr.header["interval_s"] == pytest.approx(0.1)


def test_trace_record_into_a_missing_directory_fails_cleanly(fake, tmp_path, capsys):
    rc = main(["trace", "record", "--duration", "1s", "--sysfs-root", str(fake.sys),
               "--procfs-root", str(fake.proc), str(tmp_path / "no" / "such" / "x.jsonl")])
    assert rc == 1 and "cannot write" in capsys.readouterr().err
