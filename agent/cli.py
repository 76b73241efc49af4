"""agentctl: the command line for agentd and the zoo.

Exit codes: 0 success, 1 the agent answered with an error, 2 bad usage / bad input file.
Sub-command groups owned by other modules register themselves through ``add_parsers(subparsers)``.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from agent import cli_format as F
from agent.errors import AgentError, InvalidParams, exit_code
from agent.paths import default_socket

# modules that add sub-commands
PLUGIN_MODULES = ("agent.zoo.cli", "agent.sensors.cli", "agent.policy.cli", "agent.service.cli", "agent.llm.cli",
                  "agent.demo.cli", "agent.top")
# the import names of the optional extras' packages (pyproject.toml [project.optional-dependencies]): a
# sub-command module that needs a missing one of these is hidden (a partial install still works); any
# other import error in a sub-command module (a typo, a broken module of ours) raises
OPTIONAL_IMPORTS = frozenset({"onnx", "onnx_ir", "gguf", "tokenizers", "tqdm", "onnxruntime_genai", "torch",
                              "transformers", "accelerate", "safetensors", "pynvml", "llama_cpp", "matplotlib",
                              "starlette", "uvicorn", "rich", "kserve"})


def _client(a: argparse.Namespace) -> Any:
    from agent.client import Client

    return Client(a.socket)


def _print(obj: Any, as_json: bool) -> None:
    if as_json:
        print(json.dumps(obj, indent=2, default=str))
    else:
        print(obj)


def cmd_status(a: argparse.Namespace) -> int:
    with _client(a) as c:
        st = c.status()
    if a.json:
        _print(st, True)
        return 0
    d = st["daemon"]
    print(f"agentd {d['version']}  pid {d['pid']}  up {F.duration(d['uptime_s'])}  socket {d['socket']}")
    print(f"  zoo {d.get('zoo', '-')}  state {d.get('state_dir', '-')}")
    if d.get("http"):
        print(f"  HTTP endpoint: {d['http']}/v1 (OpenAI); also /api (Ollama), /v2 (KServe), /metrics (Prometheus)")
    if d.get("reload_error"):
        print(f"  last reload failed: {d['reload_error']}")
    if st.get("policy"):
        print("policy")
        print("\n".join(F.policy_lines(st["policy"])))
    if st.get("sensors"):
        print("sensors")
        print("\n".join(F.sensors_lines(st["sensors"])))
    energy = st.get("energy") or {}
    for name, m in st["models"].items():
        act = m["active"]
        pin = f"  pinned {m['pinned']['variant']}@{m['pinned']['device']}" if m.get("pinned") else ""
        ran = ",".join(act.get("providers") or []) if act else ""
        where = (f"{act['variant']} on {act['device']}{f' [{ran}]' if ran else ''} "
                 f"(pid {act['pid']}, {F.mb(act.get('rss_bytes'))} RSS)") if act else "none"
        print(f"\n{name} [{m['kind']}]  active: {where}{pin}  requests {m['requests']}  errors {m['errors']}")
        if m.get("llm"):
            from agent.llm.cli import llm_status_line

            print(llm_status_line(m["llm"]))
        from agent.runtime.batching import status_lines

        for line in status_lines(m):
            print(line)
        print(f"  {'variant':<18}{'precision':<10}{'state':<10}{'load':>10}  reason")
        for vid, v in m["variants"].items():
            why = "; ".join(x for x in (v.get("reason"), f"UNFIT: {v['unfit']}" if v.get("unfit") else None) if x)
            print(f"  {vid:<18}{v['precision']:<10}{v['status']:<10}{F.ms(v.get('load_ms')):>10}  {why}")
        for key, e in energy.items() if isinstance(energy, dict) else ():
            if key.startswith(f"{name}/") or key == name:
                print(f"  energy {key}: {F.value(e)}")
    if not st["models"]:
        print("\nno models loaded (see the zoo line above; `agentctl zoo build` makes one)")
    for name, err in st.get("zoo_errors", {}).items():
        print(f"\nzoo error in {name}: {err}")
    for h in st.get("holds", []):
        print(f"hold {h['cookie']}: {h['profile']} by pid {h['pid']} ({h['reason']})")
    return 0


def cmd_models(a: argparse.Namespace) -> int:
    with _client(a) as c:
        ms = c.models()
    if a.json:
        _print(ms, True)
        return 0
    for m in ms:
        print(f"{m['name']} [{m['kind']}]")
        print(f"  inputs  {F.signature(m['inputs'])}")
        if m.get("outputs"):
            print(f"  outputs {F.signature(m['outputs'])}")
        print(f"  {'variant':<18}{'precision':<10}{'size':>10}  quality")
        for v in m["variants"]:
            q = v.get("quality") or {}
            rel = q.get("relative")
            print(f"  {v['id']:<18}{v['precision']:<10}{F.mb(v.get('size_bytes')):>10}  "
                  f"{'-' if rel is None else f'{rel:.3f}'}" + (f"  UNFIT: {v['unfit']}" if v.get("unfit") else ""))
    return 0


def _parse_inputs(specs: list[str]) -> dict[str, np.ndarray]:
    out = {}
    for s in specs:
        if "=" not in s:
            raise InvalidParams(f"--input: expected NAME=FILE.npy, got {s!r}")
        name, path = s.split("=", 1)
        try:
            arr = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as e:
            raise InvalidParams(f"--input {name}: cannot read {path!r} as .npy: {e}") from None
        if not isinstance(arr, np.ndarray):
            raise InvalidParams(f"--input {name}: {path!r} is not a single array (.npy)")
        out[name] = arr
    return out


def cmd_infer(a: argparse.Namespace) -> int:
    inputs = _parse_inputs(a.input)
    with _client(a) as c:
        r = c.infer(a.model, inputs, **{k: getattr(a, k) for k in ("deadline_ms", "min_quality", "priority")
                                         if getattr(a, k, None) is not None})
    if a.output:
        np.savez(a.output, **r.outputs)
    info = {"model": r.model, "variant": r.variant, "device": r.device, "latency_ms": round(r.latency_ms, 3),
            "server_ms": round(r.server_ms, 3), "run_ms": round(r.run_ms, 3), "retried": r.retried,
            "outputs": {k: {"dtype": v.dtype.name, "shape": list(v.shape)} for k, v in r.outputs.items()}}
    if a.json:
        if not a.output:
            info["values"] = {k: v.tolist() for k, v in r.outputs.items()}
        _print(info, True)
    else:
        print(f"{r.model}/{r.variant} on {r.device}: {r.latency_ms:.2f} ms")
        for k, v in r.outputs.items():
            print(f"  {k}: {v.dtype} {list(v.shape)}" + ("" if a.output else f" {np.array2string(v, threshold=20)}"))
    return 0


def cmd_pin(a: argparse.Namespace) -> int:
    with _client(a) as c:
        r = c.pin(a.model, a.variant, a.device)
    if a.json:
        _print(r, True)
    elif r.get("changed", True):
        print(f"{a.model}: pinned to {r.get('variant', a.variant)}@{r.get('device', a.device)}; swapped in "
              f"{F.ms(r.get('swap_ms'))} (load {F.ms(r.get('load_ms'))}, warm-up {F.ms(r.get('warmup_ms'))})")
    else:
        print(f"{a.model}: pinned to {a.variant}@{a.device} (already active)")
    return 0


def _policy_acts(r: dict[str, Any]) -> str:
    wait = r.get("policy_acts_in_s")
    if wait is None or wait <= 0:
        return "the policy's next decision (within a sample interval)"
    return f"the policy may swap again in {wait:.0f} s (min_dwell_s since the last swap)"


def cmd_unpin(a: argparse.Namespace) -> int:
    with _client(a) as c:
        r = c.unpin(a.model)
    if a.json:
        _print(r, True)
    elif r.get("was_pinned"):
        v, dev = r["was_pinned"]
        print(f"{a.model}: unpinned {v}@{dev}; it stays active until {_policy_acts(r)}")
    else:
        print(f"{a.model}: was not pinned")
    return 0


def cmd_hold(a: argparse.Namespace) -> int:
    """Hold a profile while this command runs (Ctrl-C, or the end of --duration, releases it)."""
    with _client(a) as c:
        cookie = c.hold(a.profile, a.reason)
        until = f"for {a.duration:g} s (Ctrl-C releases it sooner)" if a.duration else "until Ctrl-C"
        print(f"holding {a.profile} (cookie {cookie}) {until}", flush=True)
        try:
            end = time.monotonic() + a.duration if a.duration else None
            while end is None or time.monotonic() < end:
                time.sleep(0.5 if end is None else max(0.0, min(0.5, end - time.monotonic())))
        except KeyboardInterrupt:
            pass
        r = c.release(cookie)
    print(f"released {a.profile}; variants change at " + _policy_acts(r if isinstance(r, dict) else {}),
          flush=True)
    return 0


def cmd_reload(a: argparse.Namespace) -> int:
    with _client(a) as c:
        r = c.reload()
    if a.json:
        _print(r, True)
        return 0
    added = ", ".join(r.get("added") or []) or "none"
    print(f"reloaded: models added {added}")
    if r.get("policy_error"):
        print(f"policy error (the old policy stays): {r['policy_error']}")
    for name, err in (r.get("zoo_errors") or {}).items():
        print(f"zoo error in {name}: {err}")
    return 0


def cmd_events(a: argparse.Namespace) -> int:
    with _client(a) as c:
        n = 0
        try:
            for ev in c.events():
                print(json.dumps(ev, default=str), flush=True)
                n += 1
                if a.count and n >= a.count:
                    break
        except KeyboardInterrupt:
            pass
    return 0


def _maybe_json(v: Any) -> Any:
    """Telemetry keeps nested fields as JSON text; show them as values, or as they are if not JSON."""
    if isinstance(v, str) and v[:1] in "{[":
        try:
            return json.loads(v)
        except ValueError:
            return v
    return v


def cmd_history(a: argparse.Namespace) -> int:
    with _client(a) as c:
        h = c.history(a.since, a.table or None)
    if a.json:
        _print(h, True)
        return 0
    for table, rows in h.items():
        print(f"== {table} ({len(rows)})")
        for r in rows[: a.limit]:
            ts = F.clock(r.pop("ts", 0))
            fields = {k: _maybe_json(v) for k, v in r.items()}
            print(f"  {ts}  " + "  ".join(f"{k}={F.value(v)}" for k, v in fields.items() if v not in (None, "")))
    return 0


def build_parser(plugins: Sequence[str] = PLUGIN_MODULES) -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="agentctl", description="control ondevice-agent", allow_abbrev=False)
    ap.add_argument("--socket", type=Path, default=None,
                    help=f"agentd socket (default: $AGENT_SOCKET or {default_socket()})")
    sub = ap.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    def p(name: str, func: Any, help_: str, json_flag: bool = True) -> argparse.ArgumentParser:
        sp = sub.add_parser(name, help=help_)
        if json_flag:
            sp.add_argument("--json", action="store_true", help="machine-readable output")
        sp.set_defaults(func=func)
        return sp

    p("status", cmd_status, "models, active variants and devices, each variant's state")
    p("models", cmd_models, "models and their variants")
    sp = p("infer", cmd_infer, "run one inference")
    sp.add_argument("model")
    sp.add_argument("--input", action="append", default=[], required=True, metavar="NAME=FILE.npy")
    sp.add_argument("--output", type=Path, metavar="OUT.npz")
    from agent.llm.cli import add_qos_args

    add_qos_args(sp)
    sp = p("pin", cmd_pin, "force a variant/device for a model (admin)")
    sp.add_argument("model")
    sp.add_argument("variant")
    sp.add_argument("--device", default="", help="cpu, gpu, npu or an execution provider name "
                    "(default: cpu; remote/split variants run where their manifest says)")
    sp = p("unpin", cmd_unpin, "let the policy choose again (admin)")
    sp.add_argument("model")
    sp = p("hold", cmd_hold, "hold a power profile while this command runs", json_flag=False)
    sp.add_argument("profile")
    sp.add_argument("--reason", default="agentctl")
    sp.add_argument("--duration", type=float, default=0.0, help="seconds (default: until Ctrl-C)")
    p("reload", cmd_reload, "reload the zoo and policy (admin)")
    sp = p("events", cmd_events, "stream swap/decision events", json_flag=False)
    sp.add_argument("--count", type=int, default=0, help="stop after N events")
    sp = p("history", cmd_history, "telemetry: requests, swaps, decisions")
    sp.add_argument("--since", default="1h")
    sp.add_argument("--table", action="append", default=[])
    sp.add_argument("--limit", type=int, default=20)
    for mod_name in plugins:
        try:
            mod = importlib.import_module(mod_name)
        except ModuleNotFoundError as e:
            if (e.name or "").split(".")[0] not in OPTIONAL_IMPORTS:
                raise
            continue   # an optional extra that is not installed: its commands are not offered
        adder = getattr(mod, "add_parsers", None)
        if adder is not None:
            adder(sub)
    no_abbrev(ap)
    return ap


def no_abbrev(parser: argparse.ArgumentParser) -> None:
    """No prefix matching of long options anywhere (``--max-token`` is an error, not ``--max-tokens``):
    sub-parsers do not inherit ``allow_abbrev``, so set it on the whole tree."""
    parser.allow_abbrev = False
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in action.choices.values():
                no_abbrev(child)


exit_status = exit_code   # the one error -> exit code map (agent.errors.exit_code), by its CLI name


def error_line(e: AgentError, prog: str = "agentctl") -> str:
    return f"{prog}: {e}" if exit_status(e) == 2 else f"{prog}: {type(e).__name__}: {e}"


def run(func: Any, a: argparse.Namespace, prog: str = "agentctl") -> int:
    """Run one command: our errors become one line on stderr and the exit code of ``exit_status``."""
    try:
        return int(func(a) or 0)
    except AgentError as e:
        print(error_line(e, prog), file=sys.stderr)
        return exit_status(e)
    except BrokenPipeError:
        return 0


def main(argv: list[str] | None = None) -> int:
    ap = build_parser()
    a = ap.parse_args(argv)
    return run(a.func, a)


if __name__ == "__main__":
    sys.exit(main())
