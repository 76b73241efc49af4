"""The demo's timeline PNG: battery, temperature and memory above the active variant and tokens/s.

The x axis is the sensors' clock: trace hours when a trace was replayed (so a workday reads as a
workday), else seconds of the run. Swaps are vertical lines through every panel.
"""

from __future__ import annotations

from pathlib import Path

from agent.demo_record import Recorder
from agent.errors import AgentError

PALETTE = ("#1f77b4", "#2ca02c", "#d62728", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf")


def plot_timeline(rec: Recorder, path: Path, *, title: str, trace: bool) -> Path:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as e:
        raise AgentError(f"the timeline needs matplotlib ({e}): pip install 'ondevice-agent[demo]'") from None
    samples, gens, swaps, _ = rec.snapshot()
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
        ax_bat.legend(loc="upper right", fontsize=8, frameon=False)
    if all(b is None for b in bat):
        ax_bat.text(0.5, 0.5, "no battery", transform=ax_bat.transAxes, ha="center", va="center", color="grey")

    temp = [s.temp_c for s in samples]
    ax_tmp.plot(xs, [v if v is not None else float("nan") for v in temp], color="#d62728", lw=1.5)
    ax_tmp.set_ylabel("temp °C")
    levels = [s.thermal_level for s in samples]
    if any(lv not in (None, "none") for lv in levels):
        hot = [lv not in (None, "none", "light") for lv in levels]
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
    for a, b in zip(samples, samples[1:]):
        if a.variant:
            x0, x1 = t_of[id(a)], t_of[id(b)]
            ax_var.barh(0, x1 - x0, left=x0, height=1.0, color=color[a.variant], lw=0)
    ax_var.set_yticks([])
    ax_var.set_ylabel("variant")
    handles = [plt.Rectangle((0, 0), 1, 1, color=color[v]) for v in variants]
    if handles:
        ax_var.legend(handles, variants, loc="upper left", ncol=len(variants), fontsize=8, frameon=False,
                      bbox_to_anchor=(1.0, 1.0), borderaxespad=0.2, handlelength=1.2)
    ax_var.set_ylim(-0.5, 0.5)

    for v in variants:
        pts = [(x_at((g.t_start + g.t_end) / 2), g.tokens_per_s) for g in gens if g.variant == v and g.tokens_per_s]
        if pts:
            ax_tps.scatter([p[0] for p in pts], [p[1] for p in pts], s=14, color=color[v], label=v)
    ax_tps.set_ylabel("tokens/s")
    ax_tps.set_ylim(bottom=0)
    ax_tps.set_xlabel(xlabel)

    for sw in swaps:
        x = sw.trace_t / 3600 if use_trace and sw.trace_t is not None else x_at(sw.t)
        for ax in axes:
            ax.axvline(x, color="black", ls="--", lw=0.9, alpha=0.7)
        ax_bat.annotate(f"{sw.from_variant or '-'}→{sw.to_variant}", (x, 102), fontsize=8, rotation=0,
                        ha="left", va="top", xytext=(3, 0), textcoords="offset points")
    for ax in axes:
        ax.grid(True, alpha=0.25)
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
