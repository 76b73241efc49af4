"""Plot a simulation: the trace (battery, temperature, memory) above the chosen variant/device over time.

matplotlib is optional (not a runtime dependency); :func:`plot_report` raises :class:`PlotUnavailable`
when it is missing so the CLI can say so plainly.
"""

from __future__ import annotations

from pathlib import Path

from agent.policy.simulate import SimReport


class PlotUnavailable(RuntimeError):
    pass


def plot_report(rep: SimReport, out: Path, methods: tuple[str, ...] = ("policy", "oracle")) -> Path:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as e:
        raise PlotUnavailable("--plot needs matplotlib, which is not installed: pip install matplotlib") from e
    ts = [iv.t0 for iv in rep.intervals]
    snaps = [iv.snapshot for iv in rep.intervals]
    models = sorted(rep.policy.timeline[0]) if rep.policy.timeline else []
    shown = [m for m in methods if m in rep.methods]
    fig, axes = plt.subplots(3 + len(models), 1, sharex=True, figsize=(10, 2.0 * (3 + len(models))))
    axes[0].plot(ts, [s.battery.percent if s.battery.percent is not None else float("nan") for s in snaps])
    axes[0].set_ylabel("battery %")
    axes[1].plot(ts, [s.thermal.max_c if s.thermal.max_c is not None else float("nan") for s in snaps], color="r")
    axes[1].set_ylabel("max °C")
    axes[2].plot(ts, [(s.memory.available_bytes or float("nan")) / 1e6 for s in snaps], color="g")
    axes[2].set_ylabel("avail MB")
    for k, model in enumerate(models):
        ax = axes[3 + k]
        labels = sorted({step[model] for name in shown for step in rep.methods[name].timeline})
        pos = {lab: i for i, lab in enumerate(labels)}
        for j, name in enumerate(shown):
            ax.step(ts, [pos[step[model]] + 0.04 * j for step in rep.methods[name].timeline], where="post",
                    label=name, linestyle="-" if j == 0 else "--")
        ax.set_yticks(range(len(labels)), labels)
        ax.set_ylabel(model)
        ax.legend(loc="upper right", fontsize="small")
    axes[-1].set_xlabel("seconds")
    fig.suptitle(f"{rep.trace}: policy vs oracle")
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)
    return out
