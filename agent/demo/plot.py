"""The demo's timeline PNG: battery, temperature and memory above the active variant and tokens/s.

The x axis is the sensors' clock: trace hours when a trace was replayed (so a workday reads as a
workday), else seconds of the run. Swaps are vertical lines through every panel.
"""

from __future__ import annotations

import itertools
from pathlib import Path

from agent.demo.record import Recorder
from agent.errors import AgentError

PALETTE = ("#1f77b4", "#2ca02c", "#d62728", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf")


def label_lanes(xs: list[float], min_gap: float) -> list[int]:
    """A lane per label so that labels in one lane are at least ``min_gap`` apart (x ascending)."""
    last: list[float] = []
    out = []
    for x in xs:
        lane = next((k for k, prev in enumerate(last) if x - prev >= min_gap), len(last))
        if lane == len(last):
            last.append(x)
        last[lane] = x
        out.append(lane)
    return out


def plot_timeline(rec: Recorder, path: Path, *, title: str, trace: bool) -> Path:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as e:
        raise AgentError(f"the timeline needs matplotlib ({e}): pip install 'ondevice-agent[demo]'") from None
    samples, gens, swaps, policy = rec.snapshot()
    if not samples:
        raise AgentError("no sensor samples were recorded: nothing to plot")

    use_trace = trace and all(s.trace_t is not None for s in samples)
    t_of = {id(s): (s.trace_t / 3600 if use_trace else s.t) for s in samples}   # type: ignore[operator]
    xs = [t_of[id(s)] for s in samples]
    xlabel = "trace time (hours)" if use_trace else "time (s)"

    def x_at(t: float) -> float:
        """Map a run time to the x axis (nearest earlier sample's clock)."""
        if not use_trace:
            return t
        best = samples[0]
        for s in samples:
            if s.t <= t:
                best = s
            else:
                break
        return best.trace_t / 3600   # type: ignore[operator]

    fig, axes = plt.subplots(5, 1, figsize=(11, 9), sharex=True,
                             gridspec_kw={"height_ratios": [1.2, 1, 1, 0.45, 1.1]})
    ax_bat, ax_tmp, ax_mem, ax_var, ax_tps = axes

    bat = [s.battery_percent for s in samples]
    ax_bat.plot(xs, [b if b is not None else float("nan") for b in bat], color="#2ca02c", lw=1.8)
    ax_bat.set_ylabel("battery %")
    ax_bat.set_ylim(0, 105)
    on_ac = [bool(s.on_ac) for s in samples]
    if any(on_ac):
        ax_bat.fill_between(xs, 0, 105, where=on_ac, step="post", color="#ffd54f", alpha=0.35, lw=0,
                            label="on AC power")
        ax_bat.legend(loc="lower left", fontsize=8, frameon=False)
    if all(b is None for b in bat):
        ax_bat.text(0.5, 0.5, "no battery", transform=ax_bat.transAxes, ha="center", va="center", color="grey")

    temp = [s.temp_c for s in samples]
    ax_tmp.plot(xs, [v if v is not None else float("nan") for v in temp], color="#d62728", lw=1.5)
    ax_tmp.set_ylabel("temp °C")
    levels = [s.thermal_level for s in samples]
    hot = [lv not in (None, "none", "light") for lv in levels]
    if any(hot):
        lo, hi = ax_tmp.get_ylim()
        ax_tmp.fill_between(xs, lo, hi, where=hot, step="post", color="#ff8a65", alpha=0.25, lw=0,
                            label="thermal ≥ moderate")
        ax_tmp.set_ylim(lo, hi)
        ax_tmp.legend(loc="upper right", fontsize=8, frameon=False)
    if all(v is None for v in temp):
        ax_tmp.text(0.5, 0.5, "no temperature sensor", transform=ax_tmp.transAxes, ha="center", va="center",
                    color="grey")

    mem = [s.mem_available_bytes / 2**30 if s.mem_available_bytes is not None else float("nan") for s in samples]
    ax_mem.plot(xs, mem, color="#1f77b4", lw=1.5)
    ax_mem.set_ylabel("free mem GiB")

    variants = list(dict.fromkeys(s.variant for s in samples if s.variant))
    variants += [g.variant for g in gens if g.variant and g.variant not in variants]
    color = {v: PALETTE[i % len(PALETTE)] for i, v in enumerate(variants)}
    segments: list[tuple[str, float, float]] = []   # contiguous runs of one variant
    for a, b in itertools.pairwise(samples):
        if a.variant:
            x0, x1 = t_of[id(a)], t_of[id(b)]
            ax_var.barh(0, x1 - x0, left=x0, height=1.0, color=color[a.variant], lw=0)
            label = f"{a.variant}@{a.device or 'cpu'}"
            if segments and segments[-1][0] == label and segments[-1][2] == x0:
                segments[-1] = (label, segments[-1][1], x1)
            else:
                segments.append((label, x0, x1))
    span = (xs[-1] - xs[0]) or 1.0
    for label, x0, x1 in segments:
        if (x1 - x0) / span > 0.06:
            ax_var.text((x0 + x1) / 2, 0, label, ha="center", va="center", color="white", fontsize=9,
                        fontweight="bold")
    ax_var.set_yticks([])
    ax_var.set_ylabel("variant")
    ax_var.set_ylim(-0.5, 0.5)

    for v in variants:
        pts = [(x_at((g.t_start + g.t_end) / 2), g.tokens_per_s) for g in gens if g.variant == v and g.tokens_per_s]
        if pts:
            ax_tps.scatter([p[0] for p in pts], [p[1] for p in pts], s=14, color=color[v], label=v)
    if variants:
        ax_tps.legend(loc="upper right", fontsize=8, frameon=False, ncol=len(variants), markerscale=1.5)
    ax_tps.set_ylabel("decode tokens/s")
    tps = [g.tokens_per_s for g in gens if g.tokens_per_s]
    ax_tps.set_ylim(0, max(tps) * 1.3 if tps else 1.0)   # room for the legend above the points
    ax_tps.set_xlabel(xlabel)

    # swaps: a dashed line where the policy decided (the readings that caused it), a hatched span in the
    # variant lane until the new variant served (load + warm-up, in sensor time), and a numbered marker
    # in lanes that never overlap; the numbers are explained in the list under the panels
    notes: list[str] = []
    spans = []
    for sw in swaps:
        done = sw.trace_t / 3600 if use_trace and sw.trace_t is not None else x_at(sw.t)
        decided = sw.decided_trace_t / 3600 if use_trace and sw.decided_trace_t is not None else done
        spans.append((min(decided, done), done))
    for i, (sw, (decided, done), lane) in enumerate(zip(swaps, spans, label_lanes([d for d, _ in spans],
                                                                                    0.035 * span), strict=False), 1):
        for ax in axes:
            ax.axvline(decided, color="black", ls="--", lw=0.9, alpha=0.7)
        if done > decided:
            ax_var.axvspan(decided, done, ymin=0, ymax=1, facecolor="white", edgecolor="black", hatch="////",
                           lw=0, alpha=0.6)
        ax_bat.annotate(str(i), (decided, 104 - 11 * (lane % 4)), fontsize=7, ha="center", va="top",
                        bbox={"boxstyle": "circle,pad=0.2", "fc": "white", "ec": "black", "lw": 0.6})
        when = f"{int(decided)}:{int(decided * 60) % 60:02d}" if use_trace else f"{decided:.0f} s"
        text = f"{i}  {when}  {sw.from_variant or '-'}→{sw.to_variant}: {sw.reason}"
        notes.append(text if len(text) <= 110 else text[:107] + "...")
    if variants:
        from matplotlib.patches import Patch

        handles = [Patch(color=color[v], label=v) for v in variants]
        if any(sw.decided_trace_t is not None for sw in swaps):
            handles.append(Patch(facecolor="white", edgecolor="black", hatch="////", label="loading"))
        ax_var.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.0, 1.15), fontsize=7,
                      frameon=False)
    prev, last_x, level = None, None, 0
    for pc in policy:   # profile changes (with or without a swap) as dotted lines in the variant lane
        if pc.profile == prev:
            continue
        prev = pc.profile
        x = pc.trace_t / 3600 if use_trace and pc.trace_t is not None else x_at(pc.t)
        ax_var.axvline(x, color="black", ls=":", lw=1.2)
        right = x > xs[0] + 0.6 * span
        level = level + 1 if last_x is not None and abs(x - last_x) < 0.2 * span and level < 1 else 0
        last_x = x
        ax_var.annotate(f"profile {pc.profile}" + (f" ({pc.rule})" if pc.rule else ""), (x, 0.5),
                        xytext=(-2 if right else 2, 2 + 9 * level), textcoords="offset points", fontsize=7,
                        va="bottom", ha="right" if right else "left", annotation_clip=False)
    for ax in axes:
        ax.grid(True, alpha=0.25)
    fig.suptitle(title, fontsize=11)
    shown = notes[:12] + ([f"... and {len(notes) - 12} more swaps (summary.json)"] if len(notes) > 12 else [])
    if shown:
        fig.set_size_inches(11, 9 + 0.16 * len(shown))
        fig.text(0.01, 0.005, "swaps:\n" + "\n".join(shown), fontsize=7, family="monospace", va="bottom")
    fig.tight_layout(rect=(0, 0.02 + 0.16 * len(shown) / (9 + 0.16 * len(shown)) if shown else 0, 1, 1))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
