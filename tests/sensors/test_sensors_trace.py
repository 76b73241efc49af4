from __future__ import annotations

import itertools
import json

import pytest

from agent.errors import ConfigError
from agent.sensors import tracegen
from agent.sensors.live import LiveSensors
from agent.sensors.source import make_source
from agent.sensors.trace import FORMAT, TraceReplay, load_trace, record, shipped

HEADER = {"format": FORMAT, "version": 1, "interval_s": 10.0, "started_wall": 1000.0}


def write_trace(path, rows, header=HEADER):
    path.write_text("\n".join(json.dumps(x) for x in [header, *rows]) + "\n")
    return path


def rows3():
    return [
        {"t": 0, "battery": {"present": True, "percent": 90.0, "status": "Discharging"}},
        {"t": 10, "battery": {"present": True, "percent": 80.0, "status": "Discharging"},
         "thermal": {"level": "light", "headroom": 0.8, "max_c": 70.0,
                     "zones": [{"name": "thermal_zone0", "type": "x", "temp_c": 70.0, "trips": [["passive", 76.0]]}]}},
        {"t": 20, "battery": {"present": True, "percent": 70.0, "status": "Charging"}, "power": {"on_ac": True}},
    ]


def test_replay_shows_the_sample_in_force_at_each_virtual_time(tmp_path, clock):
    p = write_trace(tmp_path / "t.jsonl", rows3())
    rep = TraceReplay(p, speed=10.0, clock=clock)
    seen = []
    for _ in range(4):
        seen.append(rep.read())
        clock.advance(0.5)              # 5 trace seconds per step
    assert [s.battery.percent for s in seen] == [90.0, 90.0, 80.0, 80.0]
    assert [s.mono_s for s in seen] == [0.0, 5.0, 10.0, 15.0]
    assert seen[2].thermal.zones[0].trips == (("passive", 76.0),)
    assert seen[2].wall_s == pytest.approx(1010.0)
    clock.advance(0.5)
    last = rep.read()
    assert last.battery.status == "Charging" and last.power.on_ac is True
    assert last.source == "trace:t.jsonl"


def test_rewind_starts_the_trace_again_from_its_first_sample(tmp_path, clock):
    rep = TraceReplay(write_trace(tmp_path / "t.jsonl", rows3()), speed=10.0, clock=clock)
    clock.advance(1.5)                  # e.g. the time agentd spent loading its models
    assert rep.read().battery.percent == 80.0
    rep.rewind()
    assert rep.virtual_time() == 0.0 and rep.read().battery.percent == 90.0
    clock.advance(1.0)
    assert rep.read().battery.percent == 80.0


def test_replay_holds_the_last_sample_after_the_end_unless_looping(tmp_path, clock):
    p = write_trace(tmp_path / "t.jsonl", rows3())
    rep = TraceReplay(p, speed=1.0, clock=clock)
    clock.advance(500)
    assert rep.read().battery.percent == 70.0 and rep.finished
    looped = TraceReplay(p, speed=1.0, clock=clock, loop=True)
    clock.advance(30 + 12)               # one period (20 s + one 10 s interval) and 12 s
    snap = looped.read()
    assert snap.battery.percent == 80.0 and snap.mono_s == pytest.approx(42.0) and not looped.finished


def test_every_sample_of_a_shipped_trace_is_seen_at_its_time(clock):
    tr = load_trace(shipped("thermal_sustained_load"))
    rep = TraceReplay(tr, speed=60.0, clock=clock)
    for t, want in zip(tr.times, tr.snapshots, strict=True):
        clock.t = 1000.0 + t / 60.0
        got = rep.read()
        assert got.thermal == want.thermal and got.energy == want.energy and got.cpu == want.cpu


def test_shipped_workday_drains_from_full_to_about_ten_percent_with_plug_ins():
    tr = load_trace(shipped("laptop_workday"))
    pct = [s.battery.percent for s in tr.snapshots]
    assert pct[0] is not None and pct[0] > 99 and pct[-1] is not None and 8 <= pct[-1] <= 12
    statuses = [s.battery.status for s in tr.snapshots]
    plug_ins = sum(1 for a, b in itertools.pairwise(statuses) if a == "Discharging" and b != "Discharging")
    assert plug_ins == 2
    assert tr.header["synthesized"] is True and "synthesized" in tr.header["note"]


def test_shipped_thermal_trace_rises_through_the_trip_points_and_recovers():
    tr = load_trace(shipped("thermal_sustained_load"))
    levels = [s.thermal.level for s in tr.snapshots]
    assert levels[0] == "none" and levels[-1] == "none"
    for lvl in ("light", "moderate", "severe", "critical"):
        assert lvl in levels
    first_severe = levels.index("severe")
    assert "none" in levels[first_severe:]


def test_shipped_memory_trace_has_pressure_bursts():
    tr = load_trace(shipped("memory_pressure_bursts"))
    psi = [s.memory.psi_some_avg10 or 0.0 for s in tr.snapshots]
    rising = sum(1 for a, b in itertools.pairwise(psi) if a < 5.0 <= b)
    assert rising >= 3 and psi[0] == 0.0 and psi[-1] < 1.0
    assert all(s.battery.percent is None for s in tr.snapshots)


@pytest.mark.parametrize("name", sorted(tracegen.TRACES))
def test_shipped_traces_are_exactly_what_the_committed_generator_makes(name):
    assert shipped(name).read_text(encoding="utf-8") == tracegen.render(name)


def test_record_then_replay_gives_back_the_recorded_values(fake, clock, tmp_path):
    fake.desktop_basics()
    fake.battery_energy(energy_now=50_000_000, energy_full=60_000_000)
    live = LiveSensors(fake.sys, fake.proc, nvml=False, clock=clock)
    steps = iter(range(40, 20, -2))

    def sleep(dt):               # the recorder's sleep moves the fake clock and drains the battery
        clock.advance(dt)
        fake.battery_energy(energy_now=next(steps) * 1_000_000, energy_full=60_000_000)

    out = tmp_path / "rec.jsonl"
    n = record(live, duration=3.0, out=out, interval=1.0, clock=clock, sleep=sleep)
    assert n == 4 and not (tmp_path / "rec.jsonl.partial").exists()
    tr = load_trace(out)
    assert tr.times == (0.0, 1.0, 2.0, 3.0)
    assert ([round(s.battery.percent or 0, 2) for s in tr.snapshots]
            == [round(100 * x / 60, 2) for x in (50, 40, 38, 36)])
    rep = TraceReplay(out, speed=1.0, clock=clock)
    clock.advance(2.5)
    assert rep.read().battery.energy_wh == pytest.approx(38.0)
    assert dict(rep.read().reasons).get("thermal")


@pytest.mark.parametrize("lines, line, key", [
    ([], 1, None),
    (["not json"], 1, None),
    ([json.dumps({"format": "other", "version": 1})], 1, "format"),
    ([json.dumps({**HEADER, "version": 2}), '{"t": 0}'], 1, "version"),
    ([json.dumps(HEADER)], 1, None),
    ([json.dumps({**HEADER, "interval_s": "1s"}), '{"t": 0}'], 1, "interval_s"),
    ([json.dumps({**HEADER, "interval_s": 0}), '{"t": 0}'], 1, "interval_s"),
    ([json.dumps({**HEADER, "started_wall": "today"}), '{"t": 0}'], 1, "started_wall"),
    ([json.dumps(HEADER), '{"t": 0}', "{oops"], 3, None),
    ([json.dumps(HEADER), '{"t": 5}', '{"t": 1}'], 3, "t"),
    ([json.dumps(HEADER), '{"t": -1}'], 2, "t"),
    ([json.dumps(HEADER), '{"t": "0"}'], 2, "t"),
    ([json.dumps(HEADER), '{"t": 0, "battery": {"percent": "high"}}'], 2, "battery.percent"),
    ([json.dumps(HEADER), '{"t": 0, "battery": {"volts": 3}}'], 2, "battery.volts"),
    ([json.dumps(HEADER), '{"t": 0, "gpu": {}}'], 2, "gpu"),
    ([json.dumps(HEADER), '{"t": 0, "battery": {"present": 1}}'], 2, "battery.present"),
    ([json.dumps(HEADER), '{"t": 0, "thermal": {"zones": [{"name": "z"}]}}'], 2, "thermal.zones[0].type"),
    ([json.dumps(HEADER), '{"t": 0, "cpu": {"core_classes": 5}}'], 2, "cpu.core_classes"),
    ([json.dumps(HEADER), '{"t": 0, "reasons": ["x"]}'], 2, "reasons"),
    ([json.dumps(HEADER), '[1, 2]'], 2, None),
])
def test_malformed_trace_is_a_config_error_naming_file_line_and_key(tmp_path, lines, line, key):
    p = tmp_path / "bad.jsonl"
    p.write_text("\n".join(lines) + ("\n" if lines else ""))
    with pytest.raises(ConfigError) as ei:
        load_trace(p)
    assert ei.value.file == str(p) and ei.value.line == line and ei.value.key == key
    assert str(ei.value).startswith(f"{p}:{line}: ")


def test_missing_trace_file_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="cannot read"):
        make_source(f"trace:{tmp_path / 'nope.jsonl'}")


def test_make_source_parses_live_and_trace_specs(tmp_path, fake, clock):
    fake.desktop_basics()
    assert isinstance(make_source("live", fake.sys, fake.proc), LiveSensors)
    p = write_trace(tmp_path / "a,b.jsonl", rows3())
    rep = make_source(f"trace:{p},speed=60,loop=1", clock=clock)
    assert isinstance(rep, TraceReplay) and rep.speed == 60.0 and rep.loop
    assert make_source(f"trace:{p}").speed == 1.0


@pytest.mark.parametrize("spec", ["", "lvie", "trace:", "trace:{p},speed=0", "trace:{p},speed=fast",
                                  "trace:{p},speed=-1", "trace:{p},speed=inf", "trace:{p},loop=2",
                                  "trace:{p},sped=3", "trace:{p},speed=2,speed=3"])
def test_bad_sensor_specs_are_config_errors_on_the_sensors_key(tmp_path, spec):
    p = write_trace(tmp_path / "t.jsonl", rows3())
    with pytest.raises(ConfigError) as ei:
        make_source(spec.format(p=p))
    assert ei.value.key == "sensors"


def test_record_rejects_non_positive_duration(tmp_path, fake):
    with pytest.raises(ConfigError):
        record(LiveSensors(fake.sys, fake.proc, nvml=False), duration=0, out=tmp_path / "x.jsonl")
