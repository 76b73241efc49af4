"""``agentctl zoo build|show|import``: the zoo's command line (wired into agentctl by ``add_parsers``)."""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

from agent.errors import InvalidParams, NotFound
from agent.zoo.manifest import MANIFEST, Manifest, load_manifest, manifest_to_toml


def default_zoo_dir() -> Path:
    """$AGENT_ZOO, else the state directory's zoo (see agent.paths)."""
    from agent.paths import default_zoo

    return default_zoo()


class LineReporter:
    """Plain progress lines (not a TTY, or tqdm missing)."""

    def __init__(self, out: TextIO):
        self.out, self.total, self.i = out, 0, 0

    def start(self, total_steps: int) -> None:
        self.total, self.i = total_steps, 0

    def step(self, label: str) -> None:
        self.i += 1
        print(f"[{self.i}/{self.total}] {label} ...", file=self.out, flush=True)

    def log(self, line: str) -> None:
        print(f"      {line}", file=self.out, flush=True)

    def done(self, label: str, seconds: float, note: str = "") -> None:
        print(f"[{self.i}/{self.total}] {label}: {note or 'done'} ({seconds:.1f}s)", file=self.out, flush=True)

    def close(self) -> None:
        pass


class TqdmReporter:
    """One tqdm bar over the build's steps, advancing as each finishes; log lines above it."""

    def __init__(self, out: TextIO):
        self.out = out
        self.bar: Any = None

    def start(self, total_steps: int) -> None:
        from tqdm import tqdm

        self.bar = tqdm(total=total_steps, unit="step", file=self.out, dynamic_ncols=True, leave=True)

    def step(self, label: str) -> None:
        self.bar.set_description(label)

    def log(self, line: str) -> None:
        self.bar.write(f"  {line}", file=self.out)

    def done(self, label: str, seconds: float, note: str = "") -> None:
        self.bar.write(f"✓ {label}: {note or 'done'} ({seconds:.1f}s)", file=self.out)
        self.bar.update(1)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def make_reporter(out: TextIO) -> Any:
    if out.isatty():
        try:
            import tqdm  # noqa: F401
            return TqdmReporter(out)
        except ImportError:
            pass
    return LineReporter(out)


def _fmt(v: Any, scale: float = 1.0, digits: int = 2) -> str:
    return "-" if v is None else f"{v / scale:.{digits}f}"


def _llm_row(m: Manifest, v: Any) -> list[str]:
    meas = v.measurement("cpu") or (v.measurements[0] if v.measurements else None)
    q = v.quality
    em = (f"{q.exact_match:.3f}" + (f" ({q.exact_match_rel:.2f})" if q.exact_match_rel is not None else "")
          if q is not None and q.exact_match is not None else "-")
    ppl = q.perplexity if q is not None and q.perplexity is not None else (
        q.value if q is not None and q.metric == "perplexity" else None)
    return [
        v.id + (" *" if v.id == m.reference else "") + (" !" if v.unfit else ""), v.precision,
        _fmt(v.size_bytes, 1e6, 1), _fmt(ppl), _fmt(q.agreement if q else None, digits=3),
        _fmt(q.mean_prefix if q else None, digits=1), em, _fmt(q.relative if q else None, digits=3),
        _fmt(meas.tokens_per_s if meas else None, digits=1), _fmt(meas.ttft_ms if meas else None, digits=1),
        _fmt(meas.peak_rss_bytes if meas else None, 1e6, 1),
    ]


def _tensor_row(m: Manifest, v: Any) -> list[str]:
    meas = v.measurement("cpu") or (v.measurements[0] if v.measurements else None)
    q = v.quality
    return [
        v.id + (" *" if v.id == m.reference else "") + (" !" if v.unfit else ""), v.precision, v.derived_from,
        v.method or "-", _fmt(v.size_bytes, 1e6), f"{q.metric} {q.value:.4g}" if q else "-",
        _fmt(q.relative if q else None, digits=3),
        _fmt(meas.latency_ms_p50 if meas else None, digits=3), _fmt(meas.latency_ms_p95 if meas else None, digits=3),
        _fmt(meas.load_ms if meas else None, digits=1), _fmt(meas.peak_rss_bytes if meas else None, 1e6, 1),
        _fmt(meas.energy_j * 1000 if meas and meas.energy_j is not None else None, digits=4),
    ]


def table(m: Manifest) -> str:
    """The variant table; a causal-lm shows perplexity, greedy agreement, mean matched prefix and exact
    match (with its ratio to the reference's) next to the relative quality the policy ranks."""
    if m.kind == "causal-lm":
        head = ["variant", "precision", "size MB", "perplexity", "agree", "prefix", "exact match (rel)",
                "quality_rel", "tok/s", "ttft ms", "peak MB"]
        row = _llm_row
    else:
        head = ["variant", "precision", "from", "method", "size MB", "quality", "rel", "p50 ms", "p95 ms",
                "load ms", "peak MB", "mJ/inf"]
        row = _tensor_row
    rows = [head, *(row(m, v) for v in m.variants)]
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    notes = [f"! {v.id} is unfit (the policy never picks it): {v.unfit}" for v in m.variants if v.unfit]
    if m.kind == "causal-lm":
        notes += _draft_notes(m)
    return "\n".join([f"{m.name} ({m.kind}; * = reference, quality measured against it; ! = unfit)", *lines,
                      *notes])


def _draft_notes(m: Any) -> list[str]:
    """One line per variant agentd serves with a draft (``[llm.speculative]``); tok/s above are without it."""
    from agent.errors import LoadError
    from agent.llm.speculative import draft_for

    ids = set(m.variant_ids())
    out = []
    for v in m.variants:
        try:
            d = draft_for(m.llm, v.id, ids)
        except LoadError as e:
            return [f"! [llm.speculative]: {e}"]
        if d is not None:
            out.append(f"~ {v.id} is served with draft {d.variant} (speculative, k {d.k}"
                       f"{', share_kv' if d.share_kv else ''}; tok/s above is without it)")
    return out


def cmd_build(args: argparse.Namespace) -> int:
    from agent.zoo.build.runner import build_recipe
    from agent.zoo.recipe import load_recipe

    recipe = load_recipe(Path(args.recipe))
    zoo = Path(args.zoo) if args.zoo else default_zoo_dir()
    t = time.perf_counter()
    command = "agentctl zoo build " + " ".join(args.argv_echo) if getattr(args, "argv_echo", None) else ""
    m, reports = build_recipe(recipe, zoo, only=args.only or None, reporter=make_reporter(sys.stderr),
                              command=command)
    built = sum(1 for r in reports if r.action == "built")
    print(f"{m.name}: {built} built, {len(reports) - built} up to date or re-measured, "
          f"{time.perf_counter() - t:.1f}s -> {m.folder}", file=sys.stderr)
    print(table(m))
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    zoo = Path(args.zoo) if args.zoo else default_zoo_dir()
    folder = zoo / args.model
    if not (folder / MANIFEST).exists():
        have = sorted(p.name for p in zoo.iterdir() if (p / MANIFEST).exists()) if zoo.is_dir() else []
        raise NotFound(f"no model {args.model!r} in {zoo}" + (f"; it has {', '.join(have)}" if have else ""))
    m = load_manifest(folder, check_files=False)
    if args.json:
        print(json.dumps(manifest_to_toml(m), indent=2))
    else:
        print(table(m))
    return 0


def cmd_import(args: argparse.Namespace) -> int:
    from agent.zoo.importer import import_variant, parse_map

    zoo = Path(args.zoo) if args.zoo else default_zoo_dir()
    m = import_variant(zoo, args.model, args.variant, Path(args.path), precision=args.precision,
                       replace_existing=args.replace, rename=parse_map(args.map),
                       drop_extra_outputs=args.ignore_extra_outputs)
    v = m.variant(args.variant)
    fitted = v.build.get("fitted")
    print(f"imported {m.name}/{v.id} ({v.precision}, {v.size_bytes} bytes, sha256 {v.sha256}) -> {m.folder}"
          + (f"; {'; '.join(fitted)}" if fitted else ""))
    if args.no_measure:
        print("not measured (--no-measure): the policy cannot choose it until `agentctl zoo measure` runs")
        return 0
    from agent.zoo.measure import measure_variants, recipe_of

    try:
        recipe_of(m, Path(args.recipe) if args.recipe else None)
    except InvalidParams as e:
        print(f"not measured: {e}")
        return 0
    targets = m.variant_ids() if v.id == m.reference else [v.id]
    m, _ = measure_variants(zoo, m.name, targets, recipe=Path(args.recipe) if args.recipe else None,
                            floors=_floors(args, m.kind), log=lambda line: print(f"      {line}", file=sys.stderr))
    print(table(m))
    return 0


def cmd_measure(args: argparse.Namespace) -> int:
    from agent.zoo.measure import measure_variants

    zoo = Path(args.zoo) if args.zoo else default_zoo_dir()
    kind = load_manifest(zoo / args.model, check_files=False).kind if args.floor else "tensor"
    m, done = measure_variants(zoo, args.model, args.variant, recipe=Path(args.recipe) if args.recipe else None,
                               floors=_floors(args, kind), log=lambda line: print(f"      {line}", file=sys.stderr))
    print(f"measured {', '.join(done)}", file=sys.stderr)
    print(table(m))
    return 0


def _floors(args: argparse.Namespace, kind: str) -> dict[str, float] | None:
    from agent.zoo.build.registry import get_kind
    from agent.zoo.measure import parse_floors

    plugin = get_kind(kind)
    return parse_floors(args.floor, plugin.floors if plugin else ("quality_rel",)) if args.floor else None


FLOOR_HELP = ("NAME=MIN: below it a measured variant is recorded unfit (repeatable; default: the recipe's "
              "floors for that variant id, else quality_rel=0.9)")


def cmd_remove(args: argparse.Namespace) -> int:
    from agent.zoo.importer import remove_variant

    zoo = Path(args.zoo) if args.zoo else default_zoo_dir()
    left = remove_variant(zoo, args.model, args.variant)
    print(f"removed {args.model}" + (f"/{args.variant}" if args.variant and left is not None else "")
          + ("" if left is None else f"; left: {', '.join(left.variant_ids())}")
          + " (a running agentd drops it at its next `agentctl reload`)")
    return 0


def cmd_split(args: argparse.Namespace) -> int:
    from agent.zoo.build.split import build_split, cut_candidates

    zoo = Path(args.zoo) if args.zoo else default_zoo_dir()
    if args.list_cuts:
        m = load_manifest(zoo / args.model)
        v = m.variant(args.source or m.reference)
        print("\n".join(cut_candidates(m.path_of(v))))
        return 0
    if not args.at or not args.devices:
        raise InvalidParams("zoo split: --at and --devices are required (or --list-cuts)")
    m = build_split(zoo, args.model, at=[a.split(",") for a in args.at], devices=args.devices.split(","),
                    source=args.source, variant_id=args.id, tolerance=args.tolerance, cpu_watts=args.cpu_watts,
                    rounds=args.rounds, runs=args.runs)
    print(table(m))
    return 0


def cmd_remote(args: argparse.Namespace) -> int:
    from agent.zoo.build.offload import add_remote

    zoo = Path(args.zoo) if args.zoo else default_zoo_dir()
    m = add_remote(zoo, args.model, endpoint=args.endpoint, remote_model=args.remote_model or args.model,
                   version=args.version, variant_id=args.id, source=args.source, timeout_s=args.timeout,
                   cpu_watts=args.cpu_watts, radio_j_per_mb=args.radio_j_per_mb, rounds=args.rounds, runs=args.runs)
    print(table(m))
    return 0


def add_parsers(subparsers: Any) -> None:
    """Register ``zoo`` and its sub-commands on an argparse sub-parsers object."""
    zp = subparsers.add_parser("zoo", help="build, import and inspect model variants")
    zs = zp.add_subparsers(dest="zoo_cmd", required=True, metavar="{build,show,import,measure,remove,split,remote}")
    b = zs.add_parser("build", help="build and measure a recipe's variants")
    b.add_argument("recipe", help="recipe.toml or the folder holding it (e.g. model_zoo/silero_vad)")
    b.add_argument("--zoo", help="zoo directory (default: the state directory's zoo)")
    b.add_argument("--only", nargs="+", metavar="VARIANT", help="build only these (and what they derive from)")
    b.set_defaults(func=cmd_build)
    s = zs.add_parser("show", help="print a model's measured variants")
    s.add_argument("model")
    s.add_argument("--zoo")
    s.add_argument("--json", action="store_true", help="the manifest as JSON")
    s.set_defaults(func=cmd_show)
    i = zs.add_parser("import", help="add an ONNX file as a variant of a model")
    i.add_argument("model")
    i.add_argument("variant")
    i.add_argument("path", help="the .onnx file")
    i.add_argument("--precision", help="fp32|fp16|bf16|int8|int4|mixed (default: guessed from the graph)")
    i.add_argument("--replace", action="store_true",
                   help="overwrite an existing variant of that id (the reference too: same signature, and the "
                        "others are re-measured against it)")
    i.add_argument("--map", action="append", default=[], metavar="GRAPH_NAME=MODEL_NAME",
                   help="rename a tensor of this file to the model's name (repeatable)")
    i.add_argument("--ignore-extra-outputs", action="store_true",
                   help="drop outputs the model does not have from this variant")
    i.add_argument("--recipe", help="recipe whose [eval] gives the data to measure on (default: the model's)")
    i.add_argument("--no-measure", action="store_true", help="import without measuring (the policy skips it)")
    i.add_argument("--floor", action="append", default=[], metavar="NAME=MIN", help=FLOOR_HELP)
    i.add_argument("--zoo")
    i.set_defaults(func=cmd_import)
    ms = zs.add_parser("measure", help="measure variants (built or imported) so the policy can choose them")
    ms.add_argument("model")
    ms.add_argument("variant", nargs="*", help="variants to measure (default: all)")
    ms.add_argument("--recipe", help="recipe whose [eval] gives the data (default: the one the model was built from)")
    ms.add_argument("--floor", action="append", default=[], metavar="NAME=MIN", help=FLOOR_HELP)
    ms.add_argument("--zoo")
    ms.set_defaults(func=cmd_measure)
    rm = zs.add_parser("remove", help="remove a variant, or a whole model")
    rm.add_argument("model")
    rm.add_argument("variant", nargs="?", help="the variant (default: the whole model)")
    rm.add_argument("--zoo")
    rm.set_defaults(func=cmd_remove)
    sp = zs.add_parser("split", help="cut a variant into parts placed on different devices, measure it, add it")
    sp.add_argument("model")
    sp.add_argument("--at", action="append", metavar="TENSOR[,TENSOR]",
                    help="cut tensor(s) between two parts; repeat for more parts")
    sp.add_argument("--devices", help="one device per part, comma-separated (cpu, gpu, npu, PROVIDER[:kind])")
    sp.add_argument("--from", dest="source", help="the variant to split (default: the reference)")
    sp.add_argument("--id", help="the new variant's id (default: SOURCE-split)")
    sp.add_argument("--tolerance", type=float, default=1e-4, help="max abs difference from the unsplit outputs")
    sp.add_argument("--list-cuts", action="store_true", help="print the single-tensor cut points and exit")
    r = zs.add_parser("remote", help="add a variant served by a KServe v2 server (Triton, KServe), measured from here")
    r.add_argument("model")
    r.add_argument("--endpoint", required=True, help="http://HOST:PORT of the server")
    r.add_argument("--remote-model", help="the model's name on the server (default: MODEL)")
    r.add_argument("--version", help="the model version on the server")
    r.add_argument("--id", default="remote", help="the new variant's id (default: remote)")
    r.add_argument("--from", dest="source", help="the local variant to compare with (default: the reference)")
    r.add_argument("--timeout", type=float, default=5.0, help="seconds per request before failing over")
    r.add_argument("--radio-j-per-mb", type=float, default=0.0, help="local radio energy per MB on the wire")
    for x in (sp, r):
        x.add_argument("--cpu-watts", type=float, default=10.0, help="energy model: watts per busy core")
        x.add_argument("--rounds", type=int, default=7, help="interleaved measurement rounds (>= 5)")
        x.add_argument("--runs", type=int, default=20, help="timed runs per contender per round")
        x.add_argument("--zoo")
    sp.set_defaults(func=cmd_split)
    r.set_defaults(func=cmd_remote)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m agent.zoo.cli zoo build ...`` (until agentctl wires add_parsers)."""
    p = argparse.ArgumentParser(prog="agentctl")
    sub = p.add_subparsers(dest="cmd", required=True)
    add_parsers(sub)
    argv = list(sys.argv[1:] if argv is None else argv)
    args = p.parse_args(argv)
    args.argv_echo = argv[2:] if len(argv) > 2 else []
    from agent.cli import run

    return run(args.func, args)


if __name__ == "__main__":
    raise SystemExit(main())
