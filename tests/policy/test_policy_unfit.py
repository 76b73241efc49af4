"""A variant the zoo marked ``unfit`` has no row in the policy table, so decide() never picks it."""

from __future__ import annotations

from pathlib import Path

from policy_helpers import make_snap

from agent.policy.decide import decide
from agent.policy.model import Constraints, Profile, default_policy, with_profiles
from agent.policy.state import PolicyState
from agent.policy.table import table_from_manifests
from agent.zoo.manifest import Manifest, Measurement, Quality, TensorSpec, Variant


def _variant(vid: str, energy: float, rel: float, unfit: str | None = None) -> Variant:
    return Variant(vid, f"{vid}.onnx", "int8" if vid != "fp32" else "fp32",
                   quality=Quality("answers", rel, rel, agreement=rel),
                   measurements=(Measurement(latency_ms_p50=10.0, latency_ms_p95=12.0, energy_j=energy,
                                             peak_rss_bytes=100_000_000),), unfit=unfit)


def _manifest(int8_unfit: str | None) -> Manifest:
    spec = (TensorSpec("input_ids", "int64", ("batch", "seq")),)
    return Manifest("lm", "causal-lm", "fp32", spec, spec,
                    (_variant("fp32", 1.0, 1.0), _variant("int8", 0.4, 0.995, int8_unfit),
                     _variant("int4", 0.3, 0.6)), Path("/nonexistent"), llm={})


def test_balanced_picks_the_cheap_fit_variant_but_never_an_unfit_one():
    policy = default_policy()
    fit = decide(make_snap(), PolicyState(), policy, table_from_manifests({"lm": _manifest(None)}), 0.0)
    assert fit.choices["lm"].variant == "int8"          # least energy at >= 0.99 quality
    rows = table_from_manifests({"lm": _manifest("agreement 0.36 < floor 0.9")})
    assert [r.variant for r in rows] == ["fp32", "int4"]
    d = decide(make_snap(), PolicyState(), policy, rows, 0.0)
    assert d.choices["lm"].variant == "fp32"
    # even a profile that would take anything never sees it
    loose = with_profiles(policy, {k: Profile(k, "min_energy", Constraints(), "no constraints")
                                   for k in policy.profiles})
    assert decide(make_snap(), PolicyState(), loose, rows, 0.0).choices["lm"].variant == "int4"
