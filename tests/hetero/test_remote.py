"""Offload to a remote device: a real KServe ModelServer on loopback, our KServe v2 client, failover.

The server is KServe's own Python ModelServer (PyPI ``kserve`` 0.21) with a small ``kserve.Model`` that
wraps onnxruntime (tests/hetero/kserve_onnx.py), started by the test in its own interpreter.
"""

from __future__ import annotations

import asyncio
import http.server
import json
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import ClassVar

import numpy as np
import onnxruntime as ort
import pytest

from agent.errors import LoadError, RemoteUnavailable
from agent.ipc import protocol as P
from agent.runtime.manager import Runtime
from agent.runtime.remote import KServeClient, open_remote, probe
from agent.zoo.build.offload import add_remote
from agent.zoo.manifest import Measurement, Quality, load_manifest, load_zoo, save_manifest, with_variant
from tests.conftest import start_daemon
from tests.hetero.kserve_helpers import free_port, start_kserve


def _local(zoo: Path, x: np.ndarray) -> np.ndarray:
    s = ort.InferenceSession(str(zoo / "mlp" / "fp32.onnx"), providers=["CPUExecutionProvider"])
    return s.run(None, {"x": x})[0]


def test_client_speaks_kserve_v2_binary_tensors_and_matches_local_onnxruntime(kserve, tensor_zoo):
    c = KServeClient(kserve.url)
    try:
        assert c.ready() and c.model_ready("mlp")
        meta = c.metadata("mlp")
        assert meta["inputs"][0]["name"] == "x" and meta["inputs"][0]["datatype"] == "FP32"
        x = np.random.default_rng(0).standard_normal((3, 256)).astype(np.float32)
        y = c.infer("mlp", {"x": x}, ["y"])["y"]
        np.testing.assert_allclose(y, _local(tensor_zoo, x), rtol=1e-5, atol=1e-5)
        assert c.bytes_sent > x.nbytes and c.bytes_received > y.nbytes
    finally:
        c.close()
    sess, info = open_remote({"endpoint": kserve.url, "model": "mlp"})
    try:
        assert [i.name for i in sess.get_inputs()] == ["x"] and info["device"]["kind"] == "remote"
        assert info["providers"] == [f"remote:{kserve.url}/mlp"]
    finally:
        sess.close()
    with pytest.raises(LoadError, match="not served there"):
        open_remote({"endpoint": kserve.url, "model": "nosuchmodel"})


def test_an_unreachable_or_malformed_endpoint_is_a_clear_error():
    url = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(RemoteUnavailable, match="ConnectionRefusedError"):
        KServeClient(url, 0.5).ready()
    with pytest.raises(LoadError, match="remote server unreachable"):
        open_remote({"endpoint": url, "model": "mlp"})
    for bad in ("ftp://h:1", "http://", "http://u:p@h:1", "not a url", ""):
        with pytest.raises(LoadError):
            KServeClient(bad)
    assert probe(url, "mlp", 0.5)[0] is False


class _HalfServer(http.server.BaseHTTPRequestHandler):
    """Ready, but serves no model: every refusal path of open_remote after it has connected."""

    protocol_version = "HTTP/1.1"   # keep-alive: the connection stays open until the client closes it
    closed: ClassVar[threading.Event]

    def do_GET(self) -> None:
        self.send_response(200 if self.path == "/v2/health/ready" else 404)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def finish(self) -> None:
        super().finish()
        type(self).closed.set()

    def log_message(self, *args: object) -> None:
        pass


def test_a_refused_open_remote_closes_the_connection_it_opened():
    """The LoadError's traceback keeps open_remote's frame (and its client) alive: the server sees the
    connection end only if open_remote closed it itself."""
    _HalfServer.closed = threading.Event()
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _HalfServer)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        with pytest.raises(LoadError, match="not served there") as e:
            open_remote({"endpoint": f"http://127.0.0.1:{srv.server_address[1]}", "model": "mlp"})
        assert _HalfServer.closed.wait(10), "open_remote left its connection open"
        assert e.value is not None   # still alive here, with its traceback
    finally:
        srv.shutdown()
        srv.server_close()


def test_remote_variant_is_measured_from_here_network_included(kserve, tensor_zoo):
    m = add_remote(tensor_zoo, "mlp", endpoint=kserve.url, remote_model="mlp", rounds=5, runs=5)
    v = m.variant("remote")
    assert v.remote is not None and v.remote.endpoint == kserve.url and v.file == "" and v.placement == "remote"
    meas = v.measurement("remote")
    assert meas is not None and meas.latency_ms_p50 and meas.energy_j and meas.meter == "model"
    assert v.build["bytes_per_inference"] > 256 * 4 and v.build["ratio_p50_vs_baseline"] > 0
    assert v.quality is not None and v.quality.relative > 0.999     # same fp32 model on the server
    again = load_manifest(tensor_zoo / "mlp")                         # the manifest round-trips
    assert again.variant("remote").remote == v.remote


def _descs(x: np.ndarray) -> tuple[list, memoryview]:
    descs, bufs = P.tensor_descs({"x": x})
    return descs, memoryview(b"".join(bytes(b) for b in bufs))


def test_runtime_fails_over_to_the_local_variant_when_the_server_dies_under_load(kserve, tensor_zoo, caplog):
    add_remote(tensor_zoo, "mlp", endpoint=kserve.url, remote_model="mlp", rounds=5, runs=3)
    models, _ = load_zoo(tensor_zoo)
    events: list[dict] = []
    x = np.random.default_rng(1).standard_normal((2, 256)).astype(np.float32)
    want = _local(tensor_zoo, x)

    async def go() -> None:
        rt = Runtime(models, spare_workers=1, emit=events.append, probe_interval_s=0.3)
        await rt.start({"mlp": ("fp32", "cpu")})
        failures: list[str] = []
        served: list[str] = []
        stop = asyncio.Event()

        async def load() -> None:
            while not stop.is_set():
                try:
                    r = await rt.infer("mlp", *_descs(x))
                except Exception as e:  # noqa: BLE001 - every failure counts
                    failures.append(repr(e))
                    continue
                served.append(r.variant)
                y = np.frombuffer(bytes(r.data), np.float32).reshape(2, 64)
                if not np.allclose(y, want, rtol=1e-5, atol=1e-5):
                    failures.append(f"mismatch on {r.variant}")
                await asyncio.sleep(0)

        try:
            tasks = [asyncio.ensure_future(load()) for _ in range(3)]
            res = await rt.swap("mlp", "remote", "remote", {"why": "test offload"})
            assert res["providers"] == [f"remote:{kserve.url}/mlp"]
            t_end = time.monotonic() + 5     # a bounded poll of the tally the load tasks keep (no event for it)
            while served.count("remote") < 20 and time.monotonic() < t_end:  # noqa: ASYNC110 - see above
                await asyncio.sleep(0.05)
            assert rt.placeable(_rows(models))[-1].reachable is True
            kserve.kill()                                   # the server dies mid-load
            n = len(served)
            t_end = time.monotonic() + 10
            while (len(served) < n + 30) and time.monotonic() < t_end:  # noqa: ASYNC110 - as above
                await asyncio.sleep(0.05)
            stop.set()
            await asyncio.gather(*tasks)
            assert failures == []
            assert served[-1] == "fp32" and rt.slots["mlp"].active.variant == "fp32"
            assert rt.placeable(_rows(models))[-1].reachable is False
            st = rt.status()["mlp"]
            assert st["remotes"][f"{kserve.url}/mlp"]["reachable"] is False
        finally:
            stop.set()
            await rt.close()

    with caplog.at_level("INFO", logger="agent.swap"):
        asyncio.run(go())
    failovers = [e for e in events if e["event"] == "swap" and e["reason"].get("why") == "failover"]
    assert len(failovers) == 1 and failovers[0]["from"] == "remote" and failovers[0]["to"] == "fp32"
    assert failovers[0]["reason"]["error"]
    lines = [r for r in caplog.records if r.name == "agent.swap" and "failover" in json.dumps(
        getattr(r, "fields", {}), default=str)]
    assert len(lines) == 1


def _rows(models):  # type: ignore[no-untyped-def]
    from agent.policy.table import table_from_manifests

    rows = table_from_manifests(models)
    return sorted((r for r in rows if r.variant in ("fp32", "remote")), key=lambda r: r.variant)


# --- the whole loop through agentd --------------------------------------------------------------------
POLICY = """
schema = 1
default = "plugged"
[switching]
min_dwell_s = 0
debounce_s = 0
[switching.margins]
energy = 0.0    # the remote row is asserted cheaper, but measured here by how much: any saving must do
[profiles.plugged]
objective = "min_latency"
deny_devices = ["remote"]
[profiles.power-saver]
objective = "min_energy"
min_quality = 0.9
[[rules]]
name = "low-battery"
when = 'power.on_ac == false && battery.percent != null && battery.percent < 20.0'
exit_when = 'power.on_ac == true'
profile = "power-saver"
"""


def _trace(path: Path, phases: list[tuple[int, float, bool]]) -> None:
    rows, t = [], 0
    for n, pct, ac in phases:
        for _ in range(n):
            rows.append({"t": float(t), "battery": {"present": True, "percent": pct,
                                                    "status": "Charging" if ac else "Discharging",
                                                    "power_w": -20.0 if ac else 8.0, "count": 1},
                         "power": {"on_ac": ac, "adapters": ["ADP1"]},
                         "thermal": {"level": "none", "headroom": 0.2, "max_c": 45.0},
                         "memory": {"total_bytes": 8 << 30, "available_bytes": 6 << 30, "psi_some_avg10": 0.0},
                         "cpu": {"load_1m": 0.5}, "energy": {"meter": "battery", "power_w": 8.0}})
            t += 1
    with open(path, "w") as f:
        f.write(json.dumps({"format": "ondevice-agent-sensor-trace", "version": 1, "interval_s": 1.0,
                            "source": "test"}) + "\n")
        f.writelines(json.dumps(r) + "\n" for r in rows)


@pytest.mark.integration
def test_agentd_offloads_on_low_battery_returns_on_ac_and_fails_over_when_the_server_dies(tensor_zoo, tmp_path):
    from agent.testing import make_mlp

    # a model big enough that computing it here costs more CPU than sending it away (~5M weights)
    make_mlp(tensor_zoo / "mlp" / "fp32.onnx", 256, 16384, 64)
    m = load_manifest(tensor_zoo / "mlp", check_files=False)
    from agent.zoo.manifest import sha256_file

    p = tensor_zoo / "mlp" / "fp32.onnx"
    m = replace(m, variants=tuple(v for v in m.variants if v.id == "fp32"))
    m = with_variant(m, replace(m.variant("fp32"), sha256=sha256_file(p), size_bytes=p.stat().st_size))
    save_manifest(m)
    ks = start_kserve({"mlp": p}, tmp_path / "kserve.log")
    try:
        m = add_remote(tensor_zoo, "mlp", endpoint=ks.url, remote_model="mlp", rounds=5, runs=10)
        # the local figures measured the same way (the zoo builder's job for a recipe-built zoo)
        from agent.zoo.build.compare import run_measurement

        loc = run_measurement({"candidate": {"path": str(p), "device": "cpu"}, "baseline": str(p),
                               "rounds": 5, "runs": 10})
        fp32 = replace(m.variant("fp32"), quality=Quality("agreement", 1.0, 1.0), measurements=(Measurement(
            device="cpu", provider="CPUExecutionProvider", latency_ms_p50=loc["p50"], latency_ms_p95=loc["p95"],
            energy_j=loc["cpu_s"] * 10.0, peak_rss_bytes=int(loc["peak_rss"]), meter="model"),))
        save_manifest(with_variant(m, fp32))
        remote_e = m.variant("remote").measurement("remote").energy_j
        assert remote_e < fp32.measurements[0].energy_j, (remote_e, fp32.measurements[0].energy_j)
        _trace(tmp_path / "trace.jsonl", [(6, 60.0, False), (8, 15.0, False), (8, 40.0, True), (60, 12.0, False)])
        (tmp_path / "policy.toml").write_text(POLICY)
        d = start_daemon(tensor_zoo, tmp_path, "--sensors", f"trace:{tmp_path / 'trace.jsonl'},speed=3",
                         "--policy", str(tmp_path / "policy.toml"), "--sample-interval", "0.25")
        x = np.random.default_rng(2).standard_normal((1, 256)).astype(np.float32)
        want = _local(tensor_zoo, x)
        failures: list[str] = []
        seen: list[str] = []
        stop = threading.Event()

        def load() -> None:
            with d.client() as c:
                while not stop.is_set():
                    try:
                        r = c.infer("mlp", {"x": x})
                    except Exception as e:  # noqa: BLE001 - every failure counts
                        failures.append(repr(e))
                        continue
                    seen.append(r.variant)
                    if not np.allclose(r.outputs["y"], want, rtol=1e-4, atol=1e-4):
                        failures.append(f"mismatch on {r.variant}")
                    time.sleep(0.01)

        threads = [threading.Thread(target=load) for _ in range(2)]
        for t in threads:
            t.start()
        killed_at = None
        try:
            t_end = time.monotonic() + 40
            while time.monotonic() < t_end:
                time.sleep(0.1)
                v = seen[-1] if seen else None
                offloads = _runs(seen)
                # fp32 -> remote (low battery) -> fp32 (AC) -> remote (low again): kill the server
                if killed_at is None and offloads[:4] == ["fp32", "remote", "fp32", "remote"] and v == "remote":
                    time.sleep(0.5)
                    ks.kill()
                    killed_at = len(seen)
                if killed_at is not None and len(seen) > killed_at + 50:
                    break
            stop.set()
            for t in threads:
                t.join(30)
            with d.client() as c:
                hist = c.history("10m", ["swaps"])
                st = c.status()["models"]["mlp"]
        finally:
            stop.set()
            assert d.stop() == 0
        assert killed_at is not None, f"never offloaded twice: {_runs(seen)}\n{d.log_text()[-4000:]}"
        assert failures == []
        assert _runs(seen)[:5] == ["fp32", "remote", "fp32", "remote", "fp32"], (_runs(seen), d.log_text()[-6000:])
        assert seen[-1] == "fp32" and st["active"]["variant"] == "fp32"
        swaps = sorted(hist["swaps"], key=lambda s: s["ts"])
        reasons = [json.loads(s["reason"]) for s in swaps]
        assert [r.get("why") for r in reasons].count("failover") == 1, (reasons, d.log_text()[-6000:])
        first = next(r for s, r in zip(swaps, reasons, strict=False) if s["to"] == "remote")
        assert first["rule"] == "low-battery" and first["profile"] == "power-saver"
        assert d.log_text().count('"failover"') == 1
    finally:
        ks.kill()


def _runs(xs: list[str]) -> list[str]:
    out: list[str] = []
    for x in xs:
        if not out or out[-1] != x:
            out.append(x)
    return out


def test_a_probe_that_finds_the_server_gone_fails_over_before_any_request_meets_it(kserve, tensor_zoo):
    add_remote(tensor_zoo, "mlp", endpoint=kserve.url, remote_model="mlp", rounds=5, runs=3)
    models, _ = load_zoo(tensor_zoo)
    events: list[dict] = []

    async def go() -> None:
        rt = Runtime(models, spare_workers=0, emit=events.append, probe_interval_s=0.2)
        try:
            await rt.start({"mlp": ("int8", "cpu")})
            await rt.swap("mlp", "remote", "remote")
            kserve.kill()
            deadline = time.monotonic() + 10
            # the runtime has no event for "the failover swap is done": a bounded poll
            while rt.slots["mlp"].active.variant == "remote" and time.monotonic() < deadline:  # noqa: ASYNC110
                await asyncio.sleep(0.05)
            assert rt.slots["mlp"].active.variant == "int8"      # the last local variant, not the reference
            r = await rt.infer("mlp", *_descs(np.ones((1, 256), np.float32)))
            assert r.variant == "int8" and not r.retried
        finally:
            await rt.close()

    asyncio.run(go())
    fo = [e for e in events if e["event"] == "swap" and e["reason"].get("why") == "failover"]
    assert len(fo) == 1 and fo[0]["reason"]["error"].startswith("probe: ")
    assert any(e["event"] == "remote_unreachable" for e in events)


def test_an_unreachable_remote_row_violates_and_the_policy_stays_local(tensor_zoo):
    from agent.policy.decide import decide
    from agent.policy.model import Policy, Profile
    from agent.policy.state import PolicyState
    from agent.policy.table import VariantRow
    from agent.sensors.snapshot import Snapshot

    rows = [VariantRow("mlp", "fp32", "cpu", "CPUExecutionProvider", "fp32", 1.0, 1.0, 1.5, 0.010, 1 << 20),
            VariantRow("mlp", "remote", "remote", "kserve-v2:x", "fp32", 1.0, 3.0, 4.0, 0.001, 1 << 20)]
    pol = Policy(profiles={"saver": Profile("saver", "min_energy")}, default="saver")
    snap = Snapshot(mono_s=0.0, wall_s=0.0)
    up = decide(snap, PolicyState(), pol, [rows[0], replace(rows[1], reachable=True)], 0.0)
    assert up.choices["mlp"].variant == "remote"
    down = decide(snap, PolicyState(), pol, [rows[0], replace(rows[1], reachable=False)], 0.0)
    assert down.choices["mlp"].variant == "fp32"
    assert any(a.variant == "remote" and "server unreachable" in a.why for a in down.choices["mlp"].alternatives)


@pytest.mark.parametrize("remote,file,match", [
    ('endpoint = "ftp://h:1"\nmodel = "m"', '""', "expected http://host:port"),
    ('endpoint = "http://h:1"\nmodel = "a/b"', '""', "expected a model name"),
    ('endpoint = "http://h:1"\nmodel = "m"\ntimeout_s = 0', '""', "timeout_s"),
    ('endpoint = "http://h:1"\nmodel = "m"\nextra = 1', '""', "extra"),
    ('endpoint = "http://h:1"\nmodel = "m"', '"fp32.onnx"', "a remote variant has no local file"),
])
def test_manifest_rejects_bad_remote_entries_naming_the_key(tensor_zoo, remote, file, match):
    from agent.errors import ManifestError

    path = tensor_zoo / "mlp" / "manifest.toml"
    path.write_text(path.read_text() + f'\n[[variants]]\nid = "r"\nfile = {file}\nprecision = "fp32"\n'
                                       f'[variants.remote]\n{remote}\n')
    with pytest.raises(ManifestError, match=match):
        load_manifest(tensor_zoo / "mlp")
