"""The demo's live view (a rich Live table on a terminal, plain lines otherwise) and its summary table."""

from __future__ import annotations

import sys
import time
from typing import Any, TextIO

from agent.demo.record import Generation, PolicyChange, Recorder, Sample, Swap, VariantSummary


def fmt_clock(trace_t: float | None) -> str:
    if trace_t is None:
        return "-"
    h, rem = divmod(int(trace_t), 3600)
    return f"{h:02d}:{rem // 60:02d}"


def _f(v: float | None, spec: str, unit: str = "") -> str:
    return "-" if v is None else f"{v:{spec}}{unit}"


def sensor_cells(s: Sample | None) -> dict[str, str]:
    if s is None:
        return {k: "-" for k in ("battery", "ac", "thermal", "memory", "variant", "policy")}
    bat = _f(s.battery_percent, ".0f", " %") if s.battery_percent is not None else "none"
    ac = "-" if s.on_ac is None else ("on AC" if s.on_ac else "on battery")
    th = f"{_f(s.temp_c, '.0f', ' °C')} ({s.thermal_level or '?'})"
    mem = _f(s.mem_available_bytes / 2**30 if s.mem_available_bytes is not None else None, ".1f", " GiB free")
    var = f"{s.variant}@{s.device}" if s.variant else "(loading)"
    pol = (s.profile or "-") + (f" (rule {s.rule})" if s.rule else "")
    return {"battery": bat, "ac": ac, "thermal": th, "memory": mem, "variant": var, "policy": pol}


def gen_cells(g: Generation | None) -> dict[str, str]:
    if g is None:
        return {"tps": "-", "jpt": "-"}
    jpt = g.joules_per_token
    return {"tps": _f(g.tokens_per_s, ".1f", " tok/s"),
            "jpt": _f(jpt, ".4f", f" J/token ({g.meter})") if jpt is not None else "-"}


def swap_line(sw: Swap) -> str:
    ms = f" in {sw.swap_ms:.0f} ms" if sw.swap_ms is not None else ""
    return f"swap {sw.from_variant or '-'} → {sw.to_variant}@{sw.device}{ms}: {sw.reason}"


def policy_line(pc: PolicyChange) -> str:
    why = f"rule {pc.rule}" if pc.rule else "default"
    return f"policy → profile {pc.profile} ({why})" + (f"; {pc.changes}" if pc.changes else "")


class PlainView:
    """Refreshed lines for logs and pipes: one status line every ``every_s``, one line per swap/decision."""

    def __init__(self, rec: Recorder, out: TextIO = sys.stdout, every_s: float = 5.0) -> None:
        self.rec, self.out, self.every_s = rec, out, every_s
        self._last = -1e9

    def __enter__(self) -> PlainView:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def note(self, line: str) -> None:
        print(line, file=self.out, flush=True)

    def event(self, item: Swap | PolicyChange) -> None:
        t = f"[{self.rec.now():6.1f}s | trace {fmt_clock(item.trace_t)}]"
        self.note(f"{t} {swap_line(item) if isinstance(item, Swap) else policy_line(item)}")

    def refresh(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last < self.every_s:
            return
        self._last = now
        samples, gens, _, _ = self.rec.snapshot()
        s = samples[-1] if samples else None
        c, g = sensor_cells(s), gen_cells(gens[-1] if gens else None)
        self.note(f"[{self.rec.now():6.1f}s | trace {fmt_clock(s.trace_t if s else None)}] battery {c['battery']} "
                  f"{c['ac']} | {c['thermal']} | {c['memory']} | {c['variant']} | {g['tps']} | {g['jpt']} "
                  f"| {len(gens)} replies")


class LiveView:
    """A rich Live panel: sensors, policy, active variant, speed and energy, recent swaps, last reply."""

    def __init__(self, rec: Recorder, title: str) -> None:
        from rich.console import Console
        from rich.live import Live

        self.rec, self.title = rec, title
        self.console = Console()
        self.lines: list[str] = []
        self.live = Live(self._render(), console=self.console, refresh_per_second=4, transient=False)

    def __enter__(self) -> LiveView:
        self.live.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.live.update(self._render())
        self.live.__exit__(*exc)

    def note(self, line: str) -> None:
        self.console.print(line)

    def event(self, item: Swap | PolicyChange) -> None:
        self.lines.append(f"{fmt_clock(item.trace_t)}  " + (swap_line(item) if isinstance(item, Swap)
                                                            else policy_line(item)))
        self.lines = self.lines[-6:]

    def refresh(self, force: bool = False) -> None:
        self.live.update(self._render())

    def _render(self) -> Any:
        from rich.console import Group
        from rich.panel import Panel
        from rich.table import Table

        samples, gens, swaps, _ = self.rec.snapshot()
        s = samples[-1] if samples else None
        c, g = sensor_cells(s), gen_cells(gens[-1] if gens else None)
        t = Table.grid(padding=(0, 2))
        t.add_column(style="bold cyan", justify="right")
        t.add_column()
        t.add_column(style="bold cyan", justify="right")
        t.add_column()
        t.add_row("clock", f"{self.rec.now():.0f} s  (trace {fmt_clock(s.trace_t if s else None)})",
                  "battery", f"{c['battery']}  {c['ac']}")
        t.add_row("thermal", c["thermal"], "memory", c["memory"])
        t.add_row("policy", c["policy"], "active", f"[bold]{c['variant']}[/bold]")
        t.add_row("speed", g["tps"], "energy", g["jpt"])
        t.add_row("replies", str(len(gens)), "swaps", str(len(swaps)))
        ev = "\n".join(self.lines) if self.lines else "(no swap or policy change yet)"
        last = (self.rec.last_text or "").strip().replace("\n", " ")
        return Panel(Group(t, Panel(ev, title="swaps and policy", title_align="left"),
                           Panel(last[-300:] or "…", title="last reply", title_align="left")),
                     title=self.title, title_align="left")


def _note(r: VariantSummary) -> str:
    """Why a row has no figures: a variant that was active too briefly for any reply to start on it."""
    if r.requests == 0:
        return f"no reply finished in its {r.active_s:.1f} s active"
    return ""


def summary_table(rows: list[VariantSummary], swaps: list[Swap]) -> str:
    head = ["variant", "active s", "replies", "tokens", "tok/s", "decode tok/s", "joules", "J/token", "note"]
    body = [[f"{r.variant}@{r.device}", f"{r.active_s:.1f}", str(r.requests), str(r.tokens),
             _f(r.tokens_per_s, ".1f"), _f(r.decode_tokens_per_s, ".1f"), _f(r.joules, ".2f"),
             _f(r.joules_per_token, ".4f"), _note(r)] for r in rows]
    tot_tok = sum(r.tokens for r in rows)
    js = [r.joules for r in rows if r.joules is not None]
    body.append(["total", f"{sum(r.active_s for r in rows):.1f}", str(sum(r.requests for r in rows)), str(tot_tok),
                 "", "", _f(sum(js) if js else None, ".2f"), "", ""])
    table = [head, *body]
    widths = [max(len(r[i]) for r in table) for i in range(len(head))]
    lines = ["  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True)))
             for r in table]
    lines.insert(1, "  ".join("-" * w for w in widths))
    lines.insert(-1, "  ".join("-" * w for w in widths))
    lines.append("")
    lines.append(f"swaps: {len(swaps)}")
    for sw in swaps:
        lines.append(f"  {sw.t:6.1f}s (trace {fmt_clock(sw.trace_t)})  {swap_line(sw)}")
    return "\n".join(lines)
