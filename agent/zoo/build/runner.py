"""Build a recipe into the zoo: fetch, build each variant, measure it, record it atomically."""

from __future__ import annotations

import datetime as _dt
import fcntl
import hashlib
import json
import logging
import os
import platform
import re
import shutil
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Protocol

from agent.errors import AgentError, BuildError, ManifestError
from agent.zoo.build.fetch import resolve_source
from agent.zoo.build.registry import (
    BuildContext,
    BuildResult,
    KindPlugin,
    MeasureContext,
    MeasureResult,
    get_kind,
    tool_versions,
)
from agent.zoo.buildlog import keep_cause
from agent.zoo.floors import unfit_reason
from agent.zoo.manifest import (
    MANIFEST,
    Manifest,
    Variant,
    _signature_mismatch,
    load_manifest,
    safe_join,
    save_manifest,
    sha256_file,
    with_variant,
)
from agent.zoo.precision import verify as verify_precision
from agent.zoo.recipe import Recipe, VariantSpec

_OURS = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*-[0-9a-f]{8}$")


class Reporter(Protocol):
    def start(self, total_steps: int) -> None: ...
    def step(self, label: str) -> None: ...
    def log(self, line: str) -> None: ...
    def done(self, label: str, seconds: float, note: str = "") -> None: ...
    def close(self) -> None: ...


class SilentReporter:
    def start(self, total_steps: int) -> None: pass
    def step(self, label: str) -> None: pass
    def log(self, line: str) -> None: pass
    def done(self, label: str, seconds: float, note: str = "") -> None: pass
    def close(self) -> None: pass


@dataclass(frozen=True)
class StepReport:
    variant: str
    action: str          # built | measured | skipped
    build_s: float = 0.0
    measure_s: float = 0.0


def _digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def _jsonable(d: dict[str, Any]) -> dict[str, Any]:
    """Drop None values (TOML has no null), recursively."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        if v is None:
            continue
        out[k] = _jsonable(v) if isinstance(v, dict) else v
    return out


def build_keys(recipe: Recipe, source_shas: dict[str | None, str], plugin: KindPlugin,
               variants: Sequence[VariantSpec] | None = None) -> dict[str, tuple[str, str]]:
    """(build key, measure key) per variant id of ``variants`` (default: all; parents first, as a recipe
    lists them), from the sha256 of each source they start from (None: [source]); see docs/ZOO.md."""
    eval_fp = plugin.eval_fingerprint(recipe.eval)
    keys: dict[str, str] = {}
    wanted = {v.id for v in (variants if variants is not None else recipe.variants)}
    for v in recipe.variants:
        if v.id not in wanted:
            continue
        keys[v.id] = _digest({
            "source": source_shas[v.source], "method": v.method, "params": v.params, "precision": v.precision,
            "builder_version": v.builder.version, "tools": tool_versions(v.builder.tools),
            "parent": "source" if v.derived_from == "source" else keys[v.derived_from],
            "eval": eval_fp if v.builder.uses_eval else None,
        })
    ref = keys[recipe.reference]
    measure = {"eval": eval_fp, "measure": vars(recipe.measure), "ort": tool_versions(["onnxruntime"]),
               "host": platform.node()}
    return {vid: (k, _digest({"build": k, "reference": ref, **measure})) for vid, k in keys.items()}


def _closure(recipe: Recipe, only: Sequence[str] | None) -> list[VariantSpec]:
    if not only:
        wanted = {v.id for v in recipe.variants}
    else:
        wanted = set()
        for vid in [*only, recipe.reference]:
            cur: str = recipe.variant(vid).id
            while cur != "source" and cur not in wanted:
                wanted.add(cur)
                cur = recipe.variant(cur).derived_from
    ref = recipe.variant(recipe.reference)
    return [ref] + [v for v in recipe.variants if v.id in wanted and v.id != ref.id]


def _existing(recipe: Recipe, folder: Path) -> Manifest | None:
    if not (folder / MANIFEST).exists():
        return None
    try:
        m = load_manifest(folder, check_files=False)
    except ManifestError as e:
        raise BuildError(f"{recipe.path}: the zoo's manifest is invalid ({e}); move {folder} away to rebuild") from e
    if m.kind != recipe.kind:
        raise BuildError(f"{recipe.path}: zoo model {m.name!r} is kind {m.kind}, recipe says {recipe.kind}")
    return m


def _files_ok(m: Manifest, v: Variant) -> bool:
    try:
        p = m.path_of(v)
    except ManifestError:
        return False
    if not p.is_file() or (v.size_bytes is not None and p.stat().st_size != v.size_bytes):
        return False
    return v.sha256 is None or sha256_file(p) == v.sha256


def _publish_mode(d: Path) -> None:
    """mkdtemp makes 0700 dirs; give the variant dir the mode a plain mkdir would (the daemon may read it)."""
    mask = os.umask(0)
    os.umask(mask)
    os.chmod(d, 0o777 & ~mask)


def _rmtree(p: Path | None) -> None:
    if p is not None and p.exists():
        shutil.rmtree(p, ignore_errors=True)


class Builder:
    """One build of one recipe into one zoo (see :func:`build_recipe`)."""

    def __init__(self, recipe: Recipe, zoo: Path, reporter: Reporter, command: str):
        self.recipe, self.zoo, self.rep, self.command = recipe, zoo, reporter, command
        self.folder = zoo / recipe.name
        plugin = get_kind(recipe.kind)
        assert plugin is not None
        self.plugin = plugin
        self.paths: dict[str, Path] = {}   # variant id -> main file (built or existing)
        self.sources: dict[str | None, tuple[Path, str]] = {}   # source id (None: [source]) -> (file, sha256)

    def fail(self, vid: str, msg: str) -> BuildError:
        return BuildError(f"{self.recipe.path}: {vid}: {msg}")

    def run(self, only: Sequence[str] | None) -> tuple[Manifest, list[StepReport]]:
        recipe = self.recipe
        for vid in only or ():
            recipe.variant(vid)  # unknown ids fail before any work
        targets = _closure(recipe, only)
        needed = list(dict.fromkeys(v.source for v in targets if v.derived_from == "source"))
        self.rep.start(len(needed) + len(targets))
        for sid in needed:
            label = "fetch source" if sid is None else f"fetch source {sid}"
            t0 = time.perf_counter()
            self.rep.step(label)
            self.sources[sid] = resolve_source(recipe, self.zoo / ".cache", self.rep.log, sid)
            self.rep.done(label, time.perf_counter() - t0, self.sources[sid][0].name)
        keys = build_keys(recipe, {sid: sha for sid, (_, sha) in self.sources.items()}, self.plugin, targets)
        manifest = _existing(recipe, self.folder)
        reports = []
        for spec in targets:
            manifest, rep = self._one(spec, manifest, keys[spec.id])
            reports.append(rep)
        assert manifest is not None
        drafted = self._with_drafts(manifest)   # a recipe's new [speculative] needs no rebuild
        if drafted.llm != manifest.llm:
            save_manifest(drafted)
            manifest = drafted
        self._sweep()
        self._drop_orphans(manifest)
        return manifest, reports

    def _sweep(self) -> None:
        for p in self.folder.glob(".tmp-*"):
            _rmtree(p)

    def _drop_orphans(self, m: Manifest) -> None:
        """Remove variant dirs of ours (``<id>-<8 hex>``) that the manifest no longer refers to."""
        used = {Path(v.file).parts[0] for v in m.variants if len(Path(v.file).parts) > 1}
        for p in self.folder.iterdir():
            if p.is_dir() and p.name not in used and _OURS.match(p.name):
                _rmtree(p)

    def _source_id(self, spec: VariantSpec) -> str | None:
        """The source ``spec``'s line starts from (its own, or that of its first ancestor; None: [source])."""
        cur = spec
        while cur.derived_from != "source":
            cur = self.recipe.variant(cur.derived_from)
        return cur.source

    def _one(self, spec: VariantSpec, manifest: Manifest | None,
             key: tuple[str, str]) -> tuple[Manifest, StepReport]:
        bkey, mkey = key
        old = None
        if manifest is not None and spec.id in manifest.variant_ids():
            old = manifest.variant(spec.id)
        label = f"{spec.id} ({spec.method})"
        self.rep.step(label)
        if old is not None and manifest is not None and old.build.get("key") == bkey and _files_ok(manifest, old):
            self.paths[spec.id] = manifest.path_of(old)
            if old.build.get("measure_key") == mkey:
                unfit = unfit_reason(spec.floors, old.quality)   # the recipe's floors may have changed
                if unfit != old.unfit:
                    manifest = replace(manifest, variants=tuple(replace(x, unfit=unfit) if x.id == spec.id else x
                                                                for x in manifest.variants))
                    save_manifest(manifest)
                    self._log_unfit(spec.id, unfit)
                self.rep.done(label, 0.0, "up to date, skipped" + (f"; unfit: {unfit}" if unfit else ""))
                return manifest, StepReport(spec.id, "skipped")
            t = time.perf_counter()
            res = self._measure(spec, self.paths[spec.id], manifest)
            new = self._variant(spec, manifest.path_of(old), old.file, key, old.precision,
                                old.build.get("build_s", 0.0), time.perf_counter() - t, old.build.get("info"))
            m2 = self._manifest(manifest, new, None, res, spec.floors)
            save_manifest(m2)
            self._log_unfit(spec.id, m2.variant(spec.id).unfit)
            self.rep.done(label, time.perf_counter() - t, "re-measured")
            return m2, StepReport(spec.id, "measured", measure_s=time.perf_counter() - t)
        self.folder.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=self.folder, prefix=f".tmp-{spec.id}-"))
        final = self.folder / f"{spec.id}-{bkey[:8]}"
        try:
            t = time.perf_counter()
            result = self._build(spec, tmp, self.sources[self._source_id(spec)][0])
            build_s = time.perf_counter() - t
            main_tmp = safe_join(tmp, result.main)
            t = time.perf_counter()
            res = self._measure(spec, main_tmp, manifest)
            measure_s = time.perf_counter() - t
            aside = None
            if final.exists():
                aside = self.folder / f".tmp-old-{final.name}-{os.getpid()}"
                os.replace(final, aside)
            _publish_mode(tmp)
            os.replace(tmp, final)
            main = safe_join(final, result.main)
            rel = f"{final.name}/{result.main}"
            new = self._variant(spec, main, rel, key, result.precision or spec.precision, build_s,
                                measure_s, result.info)
            m2 = self._manifest(manifest, new, result, res, spec.floors)
            try:
                save_manifest(m2)
            except BaseException:
                os.replace(final, tmp)
                if aside is not None:
                    os.replace(aside, final)
                raise
            _rmtree(aside)
            self._log_unfit(spec.id, m2.variant(spec.id).unfit)
            self.paths[spec.id] = main
            self.rep.done(label, build_s + measure_s, f"build {build_s:.1f}s, measure {measure_s:.1f}s")
            return m2, StepReport(spec.id, "built", build_s, measure_s)
        finally:
            _rmtree(tmp)

    def _log_unfit(self, vid: str, unfit: str | None) -> None:
        if unfit:
            self.rep.log(f"{vid} is UNFIT (kept, never picked by the policy): {unfit}")

    def _build(self, spec: VariantSpec, out: Path, src_path: Path) -> BuildResult:
        inp = src_path if spec.derived_from == "source" else self.paths[spec.derived_from]
        ref = None if spec.id == self.recipe.reference else self.paths[self.recipe.reference]
        plugin, recipe = self.plugin, self.recipe

        def calibration() -> list[dict[str, Any]]:
            if plugin.calibration is None:
                raise BuildError(f"kind {recipe.kind!r} provides no calibration data")
            return plugin.calibration(recipe, ref or inp)

        ctx = BuildContext(recipe=recipe, spec=spec, input_path=inp, reference_path=ref, out_dir=out,
                           log=self.rep.log, calibration=calibration)
        root = logging.getLogger()
        level = root.level
        root.setLevel(logging.ERROR)  # ORT's quantizers warn on the root logger; keep the progress readable
        try:
            result = spec.builder.fn(ctx)
        except AgentError as e:
            raise self.fail(spec.id, f"{spec.method} failed: {self._cause(spec.id, e)}") from e
        except Exception as e:  # a tool's own exception: map at the boundary, keep its cause
            raise self.fail(spec.id, f"{spec.method} failed: {self._cause(spec.id, e)}") from e
        finally:
            root.setLevel(level)
        try:
            main = safe_join(out, result.main)
        except ManifestError as e:
            raise self.fail(spec.id, f"builder returned a bad file name: {e.message}") from e
        if not main.is_file():
            raise self.fail(spec.id, f"builder wrote no file {result.main!r}")
        if main.suffix == ".onnx":
            try:
                label, _ = verify_precision(result.precision or spec.precision, main)
            except ImportError:   # no onnx: the declared label stands
                label = result.precision or spec.precision
            except AgentError as e:
                raise self.fail(spec.id, f"{spec.method}: {e.message}") from e
            result = replace(result, precision=label)
        return result

    def _cause(self, vid: str, e: Exception) -> str:
        """``e`` in one line that keeps its cause; the whole goes to ``ZOO/<model>/.build-logs/<vid>.log``."""
        return keep_cause(self.folder, vid, e)

    def _measure(self, spec: VariantSpec, path: Path, manifest: Manifest | None) -> MeasureResult:
        is_ref = spec.id == self.recipe.reference
        ref_v = None
        if not is_ref:
            assert manifest is not None
            ref_v = manifest.variant(self.recipe.reference)
        with tempfile.TemporaryDirectory(dir=self.folder, prefix=".tmp-measure-") as wd:
            ctx = MeasureContext(recipe=self.recipe, variant_id=spec.id, model_path=path,
                                 reference_path=None if is_ref else self.paths[self.recipe.reference],
                                 reference=ref_v, work_dir=Path(wd), log=self.rep.log)
            try:
                res = self.plugin.measure(ctx)
            except AgentError as e:
                raise self.fail(spec.id, f"measuring failed: {self._cause(spec.id, e)}") from e
        if manifest is not None and not is_ref:
            for what, mine, model in (("inputs", res.inputs, manifest.inputs), ("outputs", res.outputs,
                                                                                  manifest.outputs)):
                why = _signature_mismatch(model, mine)
                if why:
                    raise self.fail(spec.id, f"{what} differ from the model's: {why}")
        return res

    def _variant(self, spec: VariantSpec, main: Path, rel: str, key: tuple[str, str],
                 precision: str, build_s: float, measure_s: float, info: Any) -> Variant:
        sid = self._source_id(spec)
        build = _jsonable({
            "key": key[0], "measure_key": key[1], "source": self.recipe.source_of(sid).describe(),
            "source_id": sid, "source_sha256": self.sources[sid][1],
            "recipe": str(self.recipe.path), "command": self.command,
            "params": dict(spec.params), "tools": tool_versions(spec.builder.tools),
            "built_at": _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "build_s": round(build_s, 3), "measure_s": round(measure_s, 3),
            "info": info or None,
        })
        return Variant(id=spec.id, file=rel, precision=precision,
                       derived_from=spec.derived_from, method=spec.method, sha256=sha256_file(main),
                       size_bytes=main.stat().st_size, build=build)

    def _manifest(self, manifest: Manifest | None, v: Variant, result: BuildResult | None,
                  res: MeasureResult, floors: dict[str, float]) -> Manifest:
        v = replace(v, inputs=res.inputs, outputs=res.outputs, quality=res.quality,
                    measurements=(res.measurement,), unfit=unfit_reason(floors, res.quality),
                    build={**v.build, **({"eval": _jsonable(res.info)} if res.info else {})})
        if manifest is None or v.id == self.recipe.reference:
            base = manifest or Manifest(name=self.recipe.name, kind=self.recipe.kind, reference=v.id,
                                        inputs=res.inputs, outputs=res.outputs, variants=(), folder=self.folder)
            llm = result.llm if result is not None and result.llm is not None else base.llm
            # a new reference with another signature makes the other variants stale: drop them
            keep = tuple(x for x in base.variants
                         if (x.inputs is None or not _signature_mismatch(res.inputs, x.inputs))
                         and (x.outputs is None or not _signature_mismatch(res.outputs, x.outputs)))
            manifest = replace(base, reference=v.id, inputs=res.inputs, outputs=res.outputs,
                               description=self.recipe.description, llm=llm, variants=keep)
        return self._with_drafts(with_variant(manifest, v))

    def _with_drafts(self, m: Manifest) -> Manifest:
        """The recipe's ``[speculative]`` as the manifest's ``[llm.speculative]``, for the pairs built so far
        (a draft that is not in the manifest would make its served variant fail to load)."""
        spec = self.recipe.speculative
        if spec is None or m.llm is None:
            return m
        ids = {x.id for x in m.variants}
        drafts = {s: d for s, d in spec["drafts"].items() if s in ids and d in ids}
        llm = {k: v for k, v in m.llm.items() if k != "speculative"}
        if drafts:
            llm["speculative"] = {**spec, "drafts": drafts}
        return replace(m, llm=llm)


def build_recipe(recipe: Recipe, zoo: Path, *, only: Sequence[str] | None = None,
                 reporter: Reporter | None = None, command: str = "") -> tuple[Manifest, list[StepReport]]:
    """Build (or bring up to date) every variant of ``recipe`` in ``zoo/<name>/``.

    Raises BuildError (one line naming the recipe and the variant) and leaves the previous manifest and
    files as they were.
    """
    rep = reporter or SilentReporter()
    locks = zoo / ".cache" / "locks"
    locks.mkdir(parents=True, exist_ok=True)
    with open(locks / f"{recipe.name}.lock", "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise BuildError(f"{recipe.path}: another build of {recipe.name!r} into {zoo} is running") from None
        return _locked_build(recipe, zoo, only, rep, command)


def _locked_build(recipe: Recipe, zoo: Path, only: Sequence[str] | None, rep: Reporter,
                  command: str) -> tuple[Manifest, list[StepReport]]:
    b = Builder(recipe, zoo, rep, command or f"agentctl zoo build {recipe.path}")
    created = not b.folder.exists()
    try:
        return b.run(only)
    finally:
        if b.folder.exists():
            b._sweep()
            if created and not (b.folder / MANIFEST).exists():
                shutil.rmtree(b.folder, ignore_errors=True)
        rep.close()

