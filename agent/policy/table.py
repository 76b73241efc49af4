"""The variant table: one row per (model, variant, measured device), built from zoo manifests.

Rows are what :func:`agent.policy.decide.decide` ranks. A variant contributes one row per
``[[variants.measurements]]`` entry (i.e. per device it was measured on); a variant that was never
measured has no row (nothing says it runs anywhere). Figures the zoo did not measure stay ``None``:
a constraint or objective that needs a missing figure treats the row as violating it ("no measured
energy_j"), so such rows are usable only by a profile that needs nothing they lack (e.g. ``max_quality``
with no latency SLO). The reference variant's ``quality_rel`` is 1.0 when its manifest gives none.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from agent.zoo.manifest import Manifest


@dataclass(frozen=True)
class VariantRow:
    model: str
    variant: str
    device: str
    provider: str
    precision: str
    quality_rel: float | None
    latency_ms_p50: float | None
    latency_ms_p95: float | None
    energy_j: float | None
    memory_bytes: int | None
    load_ms: float | None = None     # time to load the variant (prices a swap in the simulator)
    reachable: bool | None = None    # remote rows: the server answered its last probe (None = not remote)

    @property
    def key(self) -> tuple[str, str]:
        return (self.variant, self.device)

    @property
    def label(self) -> str:
        return f"{self.variant}@{self.device}"


def table_from_manifests(manifests: Mapping[str, Manifest]) -> list[VariantRow]:
    """Rows for every measured (variant, device) of every model, sorted by model, variant, device."""
    rows: list[VariantRow] = []
    for name in sorted(manifests):
        m = manifests[name]
        for v in m.variants:
            q: float | None = v.quality.relative if v.quality is not None else None
            if q is None and v.id == m.reference:
                q = 1.0
            for meas in v.measurements:
                rows.append(VariantRow(
                    model=m.name, variant=v.id, device=meas.device, provider=meas.provider,
                    precision=v.precision, quality_rel=q,
                    latency_ms_p50=meas.latency_ms_p50, latency_ms_p95=meas.latency_ms_p95,
                    energy_j=meas.energy_j, memory_bytes=meas.peak_rss_bytes, load_ms=meas.load_ms,
                ))
    rows.sort(key=lambda r: (r.model, r.variant, r.device))
    return rows


def by_model(rows: Iterable[VariantRow]) -> dict[str, list[VariantRow]]:
    out: dict[str, list[VariantRow]] = {}
    for r in rows:
        out.setdefault(r.model, []).append(r)
    return out
