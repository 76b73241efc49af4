"""``agentctl zoo measure MODEL [VARIANT]``: measure any variant in the zoo, built or imported, with the
same harness the builds use (the kind plugin's ``measure``, in a subprocess: latency, memory, energy, and
quality against the reference on the recipe's eval data), so the policy has a row for it.

The eval data comes from a recipe: ``--recipe``, else the one the model's reference was built from. For a
model a user brought (``zoo import``), write a recipe whose ``[eval]`` points at your own samples (for a
tensor model: ``data = "npz"`` with files, or ``"wav"``); ``source.path`` names the reference file.

Floors: a measured variant below its floors is recorded ``unfit`` with the figure (the policy never picks
it). The floors are those given (``--floor NAME=MIN``), else the recipe's for a variant of that id, else
:data:`agent.zoo.floors.DEFAULT_FLOORS` (a variant the recipe does not list, e.g. one a user imported).
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from agent.errors import BuildError, InvalidParams
from agent.zoo.buildlog import keep_cause
from agent.zoo.floors import DEFAULT_FLOORS, unfit_reason
from agent.zoo.manifest import MANIFEST, Manifest, Variant, _signature_mismatch, load_manifest, save_manifest

if TYPE_CHECKING:
    from agent.zoo.recipe import Recipe


def parse_floors(items: Sequence[str], known: Sequence[str]) -> dict[str, float] | None:
    """``["quality_rel=0.95", ...]`` from ``--floor``; None when none were given."""
    if not items:
        return None
    out: dict[str, float] = {}
    for item in items:
        name, eq, val = item.partition("=")
        name = name.strip()
        if not eq or name not in known:
            raise InvalidParams(f"--floor: expected NAME=MIN with NAME one of {', '.join(known)}, got {item!r}")
        try:
            lo = float(val)
        except ValueError:
            raise InvalidParams(f"--floor {name}: expected a number, got {val.strip()!r}") from None
        if lo != lo or lo in (float("inf"), float("-inf")):
            raise InvalidParams(f"--floor {name}: expected a finite number, got {val.strip()!r}")
        out[name] = lo
    return out


def recipe_of(m: Manifest, recipe: Path | None) -> Path:
    """The recipe that gives ``m`` its eval data: the one named, else the reference's own."""
    if recipe is not None:
        return recipe
    ref = m.variant(m.reference)
    known = ref.build.get("recipe") if ref.build else None
    if known and Path(known).is_file():
        return Path(known)
    raise InvalidParams(f"model {m.name!r}: no recipe is known for its eval data (the reference was "
                        f"{'imported' if ref.method == 'import' else 'built from a recipe that is gone'}); "
                        "pass --recipe RECIPE whose [eval] names your samples (docs/ZOO.md)")


def measure_variants(zoo: Path, model: str, variants: Sequence[str] = (), *, recipe: Path | None = None,
                     floors: Mapping[str, float] | None = None,
                     log: Callable[[str], None] = lambda s: None) -> tuple[Manifest, list[str]]:
    """Measure ``variants`` of ``model`` (all when empty; an unmeasured reference first, since quality is
    relative to it), mark the ones below their floors unfit (see the module docstring) and save the
    manifest; returns it and the ids measured."""
    from agent.zoo.build.registry import MeasureContext, get_kind
    from agent.zoo.recipe import load_recipe

    folder = zoo / model
    if not (folder / MANIFEST).exists():
        raise InvalidParams(f"no model {model!r} in {zoo}")
    m = load_manifest(folder)
    for vid in variants:
        m.variant(vid)   # NotFound before any work
    rec = load_recipe(recipe_of(m, recipe))
    if rec.kind != m.kind:
        raise InvalidParams(f"recipe {rec.path} is for a {rec.kind} model; {model!r} is {m.kind}")
    plugin = get_kind(m.kind)
    if plugin is None:
        raise InvalidParams(f"model {model!r} is of kind {m.kind!r}, which no installed plugin measures")
    ref = m.variant(m.reference)
    todo = list(variants) or m.variant_ids()
    if not ref.measurements and m.reference not in todo:
        todo.insert(0, m.reference)
    todo.sort(key=lambda v: v != m.reference)   # the reference first
    done = []
    for vid in todo:
        v = m.variant(vid)
        is_ref = vid == m.reference
        ref = m.variant(m.reference)
        log(f"measuring {model}/{vid}")
        with tempfile.TemporaryDirectory(dir=folder, prefix=".tmp-measure-") as wd:
            ctx = MeasureContext(recipe=rec, variant_id=vid, model_path=m.path_of(v),
                                 reference_path=None if is_ref else m.path_of(ref),
                                 reference=None if is_ref else ref, work_dir=Path(wd), log=log)
            try:
                res = plugin.measure(ctx)
            except BuildError as e:
                raise BuildError(f"{model}/{vid}: measuring failed: {keep_cause(folder, vid, e)}") from e
        for what, mine, want in (("inputs", res.inputs, m.inputs), ("outputs", res.outputs, m.outputs)):
            why = _signature_mismatch(want, mine)
            if why:
                raise BuildError(f"{model}/{vid}: {what} differ from the model's: {why}")
        build = {**v.build, "measured_with": str(rec.path)}
        if res.info:
            build["eval"] = res.info
        unfit = None if is_ref else unfit_reason(_floors_for(rec, vid, floors), res.quality)
        if unfit:
            log(f"{vid} is UNFIT (kept, never picked by the policy): {unfit}")
        nv: Variant = replace(v, quality=res.quality, measurements=(res.measurement,), build=build, unfit=unfit)
        m = replace(m, variants=tuple(nv if x.id == vid else x for x in m.variants))
        save_manifest(m)    # after each variant: a later failure keeps what was measured
        done.append(vid)
    return m, done


def _floors_for(rec: Recipe, vid: str, given: Mapping[str, float] | None) -> Mapping[str, float]:
    if given is not None:
        return given
    spec = next((x for x in rec.variants if x.id == vid), None)
    return spec.floors if spec is not None else DEFAULT_FLOORS
