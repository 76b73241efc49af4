"""The variant table: one row per (model, variant, measured device), built from zoo manifests.

Rows are what :func:`agent.policy.decide.decide` ranks. A variant contributes one row per
``[[variants.measurements]]`` entry (i.e. per device it was measured on); a variant that was never measured
has no row (nothing says it runs anywhere), and neither has a variant the zoo marked ``unfit`` (it failed
its recipe's quality floors: the policy never picks it; an admin may still pin it). Figures the zoo did not
measure stay ``None``: a constraint or objective that needs a missing figure treats the row as violating it
("no measured energy_j"), so such rows are usable only by a profile that needs nothing they lack (e.g.
``max_quality`` with no latency SLO). The reference variant's ``quality_rel`` is 1.0 when its manifest gives
none.

A variant whose manifest marks it ``unfit = "reason"`` has no row. A causal-lm row's figures are per token
(``unit = "token"``); a request of N tokens takes ``ttft + N x per-token`` and ``N x energy``.

**State.** Rows carry the zoo's measured cost curve (``costs.toml``, see :mod:`agent.policy.costs`) when
there is one; ``row.at(state)`` gives the row's figures at a compute state (the figures decide() and the
simulator rank and account). The row's own nominal figures stay the manifest's.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace

from agent.policy.costs import NOMINAL, ComputeState, CostCurve, load_costs, scaled
from agent.zoo.manifest import Manifest

DEFAULT_LOAD_MS = 1000.0   # what a swap to a row without a measured load_ms is taken to take


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
    unit: str = "request"            # what latency/energy are per: "request" | "token" (causal-lm)
    ttft_ms: float | None = None     # causal-lm: time to first token
    meter: str | None = None         # how energy_j was measured (model = CPU time x per-core power, rapl, ...)
    curve: CostCurve | None = None   # measured costs under CPU quota / competing load
    state: ComputeState = NOMINAL    # the compute state these figures are for
    reachable: bool | None = None    # remote rows: the server answered its last probe (None = not remote)

    @property
    def key(self) -> tuple[str, str]:
        return (self.variant, self.device)

    @property
    def basis(self) -> str:
        return "measured" if self.curve is not None else "scaled"

    def at(self, s: ComputeState) -> VariantRow:
        """This row's figures at compute state ``s``: from the measured curve when there is one (at every
        state, so a curve row never mixes two measurements), else latency scaled by 1/compute. Take it
        from a nominal row (the table's)."""
        if self.state != NOMINAL:
            raise ValueError(f"{self.label}: at() needs the nominal row, got one at {self.state.describe()}")
        if self.curve is not None:
            p = self.curve.at(s)
            return replace(self, latency_ms_p50=p.latency_ms_p50, latency_ms_p95=p.latency_ms_p95,
                           energy_j=p.energy_j, ttft_ms=p.ttft_ms if p.ttft_ms is not None else self.ttft_ms, state=s)
        if s == NOMINAL:
            return self
        p50, p95 = scaled(self.latency_ms_p50, self.latency_ms_p95, s)
        return replace(self, latency_ms_p50=p50, latency_ms_p95=p95, ttft_ms=scaled(self.ttft_ms, None, s)[0], state=s)

    def request_ms(self, tokens: int | None, pct: int = 95) -> float | None:
        """p95 (or ``pct=50``: p50) latency of one request (``tokens`` generated tokens for a per-token row)."""
        lat = self.latency_ms_p95 if pct == 95 else self.latency_ms_p50
        if lat is None:
            return None
        if self.unit != "token":
            return lat
        return (self.ttft_ms or 0.0) + max(1, tokens or 1) * lat

    def request_j(self, tokens: int | None) -> float | None:
        if self.energy_j is None:
            return None
        return self.energy_j * (max(1, tokens or 1) if self.unit == "token" else 1)

    def swap_j(self, power_w: float, default_load_ms: float = DEFAULT_LOAD_MS) -> float:
        """The energy of swapping to this row: its load time x the power drawn while loading."""
        return (self.load_ms if self.load_ms is not None else default_load_ms) / 1000.0 * power_w

    @property
    def label(self) -> str:
        return f"{self.variant}@{self.device}"


def table_from_manifests(manifests: Mapping[str, Manifest]) -> list[VariantRow]:
    """Rows for every measured (variant, device) of every model, sorted by model, variant, device."""
    rows: list[VariantRow] = []
    for name in sorted(manifests):
        m = manifests[name]
        folder = getattr(m, "folder", None)
        curves = load_costs(folder) if folder is not None else {}
        unit = "token" if m.kind == "causal-lm" else "request"
        for v in m.variants:
            if v.unfit:
                continue
            q: float | None = v.quality.relative if v.quality is not None else None
            if q is None and v.id == m.reference:
                q = 1.0
            for meas in v.measurements:
                ce = curves.get((v.id, meas.device))
                if ce is not None and ce.sha256 and v.sha256 and ce.sha256 != v.sha256:
                    ce = None     # measured on another build of the variant: stale
                rows.append(VariantRow(
                    model=m.name, variant=v.id, device=meas.device, provider=meas.provider,
                    precision=v.precision, quality_rel=q,
                    latency_ms_p50=meas.latency_ms_p50, latency_ms_p95=meas.latency_ms_p95,
                    energy_j=meas.energy_j, memory_bytes=meas.peak_rss_bytes, load_ms=meas.load_ms,
                    unit=unit, ttft_ms=meas.ttft_ms, meter=meas.meter,
                    curve=ce.curve if ce is not None else None,
                ))
    rows.sort(key=lambda r: (r.model, r.variant, r.device))
    return rows


def by_model(rows: Iterable[VariantRow]) -> dict[str, list[VariantRow]]:
    out: dict[str, list[VariantRow]] = {}
    for r in rows:
        out.setdefault(r.model, []).append(r)
    return out
