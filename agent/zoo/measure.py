"""``agentctl zoo measure MODEL [VARIANT]``: measure any variant in the zoo, built or imported, with the
same harness the builds use (the kind plugin's ``measure``, in a subprocess: latency, memory, energy, and
quality against the reference on the recipe's eval data), so the policy has a row for it.

The eval data comes from a recipe: ``--recipe``, else the one the model's reference was built from. For a
model a user brought (``zoo import``), write a recipe whose ``[eval]`` points at your own samples (for a
tensor model: ``data = "npz"`` with files, or ``"wav"``); ``source.path`` names the reference file.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path

from agent.errors import BuildError, InvalidParams
from agent.zoo.manifest import MANIFEST, Manifest, Variant, _signature_mismatch, load_manifest, save_manifest


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
                     log: Callable[[str], None] = lambda s: None) -> tuple[Manifest, list[str]]:
    """Measure ``variants`` of ``model`` (all when empty; an unmeasured reference first, since quality is
    relative to it) and save the manifest; returns it and the ids measured."""
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
                raise BuildError(f"{model}/{vid}: measuring failed: {e.message}") from e
        for what, mine, want in (("inputs", res.inputs, m.inputs), ("outputs", res.outputs, m.outputs)):
            why = _signature_mismatch(want, mine)
            if why:
                raise BuildError(f"{model}/{vid}: {what} differ from the model's: {why}")
        build = {**v.build, "measured_with": str(rec.path)}
        if res.info:
            build["eval"] = res.info
        nv: Variant = replace(v, quality=res.quality, measurements=(res.measurement,), build=build)
        m = replace(m, variants=tuple(nv if x.id == vid else x for x in m.variants))
        save_manifest(m)    # after each variant: a later failure keeps what was measured
        done.append(vid)
    return m, done
