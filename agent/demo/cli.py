"""``agentctl demo``: the first-run demo (the README's first command runs it through ``scripts/demo``).

    build the default zoo if missing ─► start agentd (default policy; a shipped trace when there is
    no battery) ─► chat workload through the client ─► live view ─► summary table + timeline PNG

1. The zoo: the SmolLM2 recipe's quick variants (``fp32 int8 int4`` by default, onnxruntime-genai builder
   graphs from the GGUF; the pruned and distilled ones take many minutes, so the demo leaves them out) are
   built into the state directory's zoo
   when missing, with the zoo builder's progress bars.
2. agentd runs as a child process with ``policies/balanced.toml``. On a machine without a battery the
   sensors replay ``laptop_workday`` (a synthesized 9 h workday) fast enough that the day passes in
   ``--duration`` seconds, and the demo says so.
3. A chat workload streams replies through :class:`agent.client.Client`; the demo subscribes to the
   daemon's events and polls its status, showing battery, AC, temperature, memory, the active variant
   and device, tokens/s, joules per token and every swap with its reason.
4. At the end: a summary table (time, tokens, energy per variant; swaps), ``summary.json`` and
   ``timeline.png`` in the output folder, whose path it prints.

CPU-heavy work (builds, the daemon and its workers) is bounded to ``--cores`` cores (default 2) by the
process's CPU affinity, which every child inherits, and by the daemon's ``--threads``.
Exit status: 0 done, 1 the demo failed (build, daemon, no reply), 2 bad options.
"""

from __future__ import annotations

import argparse
import logging
import os
import queue
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from agent.demo.agentd import Agentd, DemoError, Plan, follow_events, run_workload
from agent.errors import AgentError, ConfigError, exit_code

REPO = Path(__file__).resolve().parents[2]
DEFAULT_RECIPE = REPO / "model_zoo" / "smollm2" / "recipe.toml"
# a small tensor model beside the LLM, so `agentctl infer` and the README's snippet have a model
TENSOR_RECIPE = REPO / "model_zoo" / "silero_vad" / "recipe.toml"
# the default policy, plus the shipped workday add-on (best quality on AC, int4-class quality allowed
# on low battery) so a workday shows the agent adapting; --policy replaces both
DEFAULT_POLICIES = [REPO / "policies" / "balanced.toml", REPO / "policies" / "workday-demo.toml"]
DEFAULT_VARIANTS = ("fp32", "int8", "int4")
DEFAULT_TRACE = "laptop_workday"


def _positive(kind: type) -> Any:
    def conv(text: str) -> Any:
        try:
            v = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a positive {kind.__name__}, got {text!r}") from None
        if not (0 < v < float("inf")):
            raise argparse.ArgumentTypeError(f"expected a positive {kind.__name__}, got {text!r}")
        return v

    conv.__name__ = kind.__name__
    return conv


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--duration", type=_positive(float), default=120.0,
                   help="seconds of chat workload (default: %(default)s)")
    p.add_argument("--speed", type=_positive(float),
                   help="trace seconds per second (default: the whole trace in --duration)")
    p.add_argument("--zoo", type=Path, help="zoo directory (default: the state directory's zoo)")
    p.add_argument("--no-build", action="store_true", help="never build: fail if the zoo lacks the variants")
    p.add_argument("--out", type=Path, help="folder for summary.json, timeline.png, agentd.log "
                                            "(default: STATE_DIR/demo/<time>)")
    p.add_argument("--state-dir", type=Path, help="state directory (default: $AGENT_STATE_DIR or the user's)")
    p.add_argument("--recipe", type=Path, default=DEFAULT_RECIPE, help="model recipe (default: SmolLM2)")
    p.add_argument("--no-tensor-model", action="store_true",
                   help="do not build and serve the small tensor model (Silero VAD, ~15 s to build)")
    p.add_argument("--variants", nargs="+", default=list(DEFAULT_VARIANTS), metavar="VARIANT",
                   help="variants to build and serve (default: %(default)s, a few minutes to build)")
    p.add_argument("--policy", type=Path, action="append",
                   help="policy file, repeatable (default: policies/balanced.toml + policies/workday-demo.toml)")
    p.add_argument("--sensors", help="'live' or 'trace:FILE[,speed=N]' (default: live with a battery, "
                                     "else the shipped workday trace)")
    p.add_argument("--trace", default=DEFAULT_TRACE,
                   help="shipped trace name or file replayed when there is no battery (default: %(default)s)")
    p.add_argument("--cores", type=_positive(int), default=2, help="CPU cores for builds and agentd (default: 2)")
    p.add_argument("--max-tokens", type=_positive(int), default=64, help="tokens per reply (default: 64)")
    p.add_argument("--plain", action="store_true", help="plain lines instead of the live table")
    p.add_argument("--socket", type=Path, help="agentd's socket (default: a private one in a temporary folder)")
    p.add_argument("--keep-serving", action="store_true",
                   help="after the demo, leave an agentd running in the background on live sensors, the "
                        "demo's zoo and the default socket, so `agentctl status` works at once")
    p.add_argument("--sysfs-root", default="/sys", help=argparse.SUPPRESS)


def add_parsers(subparsers: Any) -> None:
    p = subparsers.add_parser("demo", help="first-run demo: build SmolLM2, run agentd, chat, plot",
                              description=__doc__.split("\n\n")[0] if __doc__ else None)
    add_arguments(p)
    p.set_defaults(func=run_demo)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="agentctl demo")
    add_arguments(p)
    return run_demo(p.parse_args(argv))


# ------------------------------------------------------------------------------------------ setup

def bound_cores(n: int) -> list[int]:
    """Pin this process (and so every child) to ``n`` of the cores it may use."""
    try:
        allowed = sorted(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return []
    chosen = allowed[:n]
    try:
        os.sched_setaffinity(0, chosen)
    except OSError:
        return allowed
    return chosen


def choose_sensors(a: argparse.Namespace) -> tuple[str, str, bool]:
    """(spec, what to tell the user, is it a trace)."""
    if a.sensors:
        return a.sensors, f"sensors: {a.sensors}", a.sensors.startswith("trace:")
    from agent.sensors.live import LiveSensors

    live = LiveSensors(a.sysfs_root, nvml=False)
    try:
        has_battery = live.read().battery.present
    finally:
        close = getattr(live, "close", None)
        if close is not None:
            close()
    if has_battery:
        return "live", "sensors: this machine's own battery, temperature and memory (live)", False
    from agent.sensors.trace import load_trace, shipped

    own = Path(a.trace).suffix == ".jsonl"
    path = Path(a.trace) if own else shipped(a.trace)
    tr = load_trace(path)   # ConfigError on a bad file
    dur = tr.duration_s
    speed = a.speed or max(dur / a.duration, 1.0)
    note = tr.header.get("note") or ""
    msg = (f"No battery on this machine: replaying the {'' if own else 'shipped '}trace {path.stem!r} "
           f"({dur / 3600:.1f} h{'; ' + note if note else ''}) at {speed:.0f}x, so {dur / 3600:.1f} h pass in "
           f"{dur / speed:.0f} s. Battery, AC and temperature below come from the trace; memory too.")
    return f"trace:{path},speed={speed:g}", msg, True


def ensure_zoo(recipe_path: Path, zoo: Path, variants: list[str], build: bool) -> str:
    """The model's name; builds the missing variants (progress bars on a terminal) unless ``build`` is False."""
    from agent.zoo.manifest import MANIFEST, load_manifest
    from agent.zoo.recipe import load_recipe

    recipe = load_recipe(recipe_path)
    known = {v.id for v in recipe.variants}
    unknown = [v for v in variants if v not in known]
    if unknown:
        raise ConfigError(f"--variants: {recipe.name} has no variant {unknown[0]!r}; "
                          f"it has {', '.join(sorted(known))}", file=str(recipe_path))
    folder = zoo / recipe.name
    have: set[str] = set()
    if (folder / MANIFEST).exists():
        try:
            have = {v.id for v in load_manifest(folder).variants}
        except AgentError as e:
            if not build:
                raise DemoError(f"the zoo's {recipe.name} is unusable ({e}); run without --no-build") from None
    missing = [v for v in variants if v not in have]
    if not missing:
        print(f"zoo: {recipe.name} has {', '.join(variants)} in {zoo}", flush=True)
        return recipe.name
    if not build:
        raise DemoError(f"the zoo {zoo} lacks {recipe.name} variants {', '.join(missing)}; "
                        "run without --no-build to build them")
    from agent.zoo.build.runner import build_recipe
    from agent.zoo.cli import make_reporter, table

    print(f"zoo: building {recipe.name} {', '.join(missing)} into {zoo} "
          "(a few minutes the first time)", flush=True)
    t0 = time.perf_counter()
    m, _ = build_recipe(recipe, zoo, only=variants, reporter=make_reporter(sys.stderr),
                        command=f"agentctl demo (zoo build {recipe_path} --only {' '.join(variants)})")
    print(table(m), flush=True)
    print(f"zoo: built in {time.perf_counter() - t0:.0f} s", flush=True)
    return recipe.name


def run_demo(a: argparse.Namespace) -> int:
    try:
        return _run(a)
    except AgentError as e:   # 2 bad options or files, 1 anything else: the one map of every CLI
        print(f"agentctl demo: {e}", file=sys.stderr)
        return exit_code(e)
    except KeyboardInterrupt:
        print("agentctl demo: interrupted", file=sys.stderr)
        return 130


def _quiet_logging() -> None:
    """Our warnings on stderr; and a root handler in place, so libraries that call basicConfig(INFO)
    at import time (ORT's quantizer) do not flood the demo's output."""
    root = logging.getLogger()
    if not root.handlers:
        h = logging.StreamHandler(sys.stderr)
        h.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
        root.addHandler(h)
    root.setLevel(logging.WARNING)


def _run(a: argparse.Namespace) -> int:
    from agent.paths import default_state_dir, default_zoo
    from agent.policy.loader import load_policy
    from agent.sensors.source import make_source

    _quiet_logging()
    for p in [a.recipe, *(a.policy or DEFAULT_POLICIES)]:
        if not Path(p).is_file():
            raise ConfigError(f"no such file: {p}")
    load_policy(a.policy or DEFAULT_POLICIES)   # a bad policy fails here, not inside agentd
    if a.sensors:
        make_source(a.sensors, a.sysfs_root).close()
    cores = bound_cores(a.cores)
    state = a.state_dir or default_state_dir()
    zoo = a.zoo or default_zoo(state)
    out = a.out or state / "demo" / time.strftime("%Y%m%d-%H%M%S")
    out.mkdir(parents=True, exist_ok=True)
    sensors, note, is_trace = choose_sensors(a)
    print(f"ondevice-agent demo: {a.duration:.0f} s of chat on {len(cores) or 'all'} CPU cores "
          f"({', '.join(map(str, cores))})", flush=True)
    model = ensure_zoo(a.recipe, zoo, list(a.variants), build=not a.no_build)
    if not a.no_tensor_model:
        from agent.zoo.recipe import load_recipe

        ensure_zoo(TENSOR_RECIPE, zoo, [v.id for v in load_recipe(TENSOR_RECIPE).variants], build=not a.no_build)
    plan = Plan(model, a.recipe, zoo, out, list(a.policy or DEFAULT_POLICIES), sensors, note, is_trace, cores,
                a.sysfs_root)
    print(note, flush=True)
    print(f"policy: {', '.join(str(p) for p in plan.policy)}", flush=True)
    return _serve_and_chat(plan, a)


def _serve_and_chat(plan: Plan, a: argparse.Namespace) -> int:
    from agent.client import Client
    from agent.demo.plot import plot_timeline
    from agent.demo.record import Recorder
    from agent.demo.view import LiveView, PlainView, summary_table

    print(f"starting agentd (log: {plan.out / 'agentd.log'}) ...", flush=True)
    d = Agentd(plan, a.socket)
    rec: Recorder | None = None
    interrupted = died = False
    try:
        d.wait_ready()
        rec = Recorder(plan.model)
        events: queue.Queue[dict[str, Any]] = queue.Queue()
        stop = threading.Event()
        threading.Thread(target=follow_events, args=(d.socket, events), daemon=True).start()
        worker = threading.Thread(target=run_workload, args=(d.socket, plan.model, rec, stop, a.max_tokens),
                                  daemon=True)
        worker.start()
        tty = sys.stdout.isatty() and not a.plain
        view: Any
        if tty:
            try:
                view = LiveView(rec, f"ondevice-agent demo: {plan.model}")
            except ImportError:
                view = PlainView(rec)
        else:
            view = PlainView(rec)
        with Client(d.socket, timeout=30) as status_client, view:
            try:
                end = time.monotonic() + a.duration
                while time.monotonic() < end and d.alive():
                    try:
                        rec.add_status(status_client.status())
                    except AgentError as e:
                        rec.errors.append(f"status: {e}")
                    while True:
                        try:
                            item = rec.add_event(events.get_nowait())
                        except queue.Empty:
                            break
                        if item is not None:
                            view.event(item)
                    view.refresh()
                    time.sleep(0.5)
            except KeyboardInterrupt:
                interrupted = True
            died = not d.alive()
            stop.set()
            view.note("stopping: cancelling the reply in progress, stopping agentd ...")
            worker.join(timeout=60)
            if d.alive():
                try:
                    rec.add_status(status_client.status())
                except AgentError:
                    pass
            while not events.empty():
                item = rec.add_event(events.get_nowait())
                if item is not None:
                    view.event(item)
            view.refresh(force=True)
    except KeyboardInterrupt:
        interrupted = True
    finally:
        rc = d.stop()
    if rec is None:
        return 1
    _, gens, swaps, _ = rec.snapshot()
    print()
    print(summary_table(rec.summary(), swaps))
    for err in rec.errors[:10]:
        print(f"error seen: {err}")
    summary = rec.write(plan.out)
    png = plan.out / "timeline.png"
    try:
        src = Path(plan.sensors.split(",")[0].removeprefix("trace:")).stem if plan.trace else "live sensors"
        plot_timeline(rec, png, trace=plan.trace, title=f"{plan.model} under policy "
                      f"{', '.join(p.stem for p in plan.policy)}, sensors: {src}")
        print(f"\ntimeline: {png}")
    except AgentError as e:
        print(f"timeline: not written ({e})")
    print(f"summary:  {summary}\nagentd log: {d.log_path} (exit {rc})")
    if interrupted:
        print("interrupted")
    if died:
        print(f"agentctl demo: agentd exited during the run (status {rc}); see {d.log_path}", file=sys.stderr)
        return 1
    if not gens:
        print("agentctl demo: no reply was generated; see the agentd log above", file=sys.stderr)
        return 1
    _next_steps(plan, a)
    return 0


def _next_steps(plan: Plan, a: argparse.Namespace) -> None:
    """Where things are, and how to talk to an agentd of one's own."""
    from agent.paths import default_socket, default_state_dir

    policy = " ".join(f"--policy {p}" for p in plan.policy)
    print(f"\nzoo: {plan.zoo}\ndemo outputs: {plan.out}")
    if a.keep_serving:
        from agent.demo.agentd import serve_in_background

        state = a.state_dir or default_state_dir()
        pid, log_path = serve_in_background(plan.zoo, plan.policy, default_socket(), state)
        print(f"agentd keeps serving in the background: pid {pid}, socket {default_socket()}, log {log_path}\n"
              f"  try: agentctl status · agentctl generate {plan.model} \"What is the capital of France?\"\n"
              f"  stop it with: kill {pid}")
    else:
        print(f"run your own agentd:  agentd --zoo {plan.zoo} {policy} &\n"
              f"then:                 agentctl status   (socket {default_socket()})")
