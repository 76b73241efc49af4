"""Zoo manifests: one folder per model under a zoo directory, each with ``manifest.toml``.

Format (schema 1)::

    schema = 1
    name = "mlp"                  # must equal the folder name
    kind = "tensor"               # "tensor" | "causal-lm"
    reference = "fp32"            # the variant that quality is measured against
    description = "..."           # optional

    [[inputs]]                    # the model's signature; every variant must match it
    name = "x"
    dtype = "float32"             # numpy dtype name
    shape = ["batch", 256]        # ints are fixed dims, strings symbolic

    [[outputs]]
    name = "y"
    dtype = "float32"
    shape = ["batch", 10]

    [[variants]]
    id = "int8"
    file = "int8.onnx"            # relative to the model folder; never outside it
    precision = "int8"            # fp32 | fp16 | bf16 | int8 | int4 | mixed
    derived_from = "fp32"         # "source" or another variant id
    method = "quantize_dynamic"   # how it was derived (free text)
    sha256 = "..."                # of the file; checked when the file is loaded
    size_bytes = 1234
    inputs = [...]; outputs = [...]   # optional: the variant's own signature as measured
    unfit = "agreement 0.82 < floor 0.9"   # optional: failed a recipe floor; the policy never picks it
    [variants.quality]            # measured against the reference on held-out data
    metric = "agreement"          # e.g. agreement | top1 | perplexity | answers
    value = 0.998                 # the metric's raw value
    relative = 0.998              # quality relative to the reference, 1.0 = equal (higher is better)
    perplexity = 10.2             # optional figures (causal-lm, see docs/LLM.md): perplexity and its
    perplexity_rel = 0.99         # ratio to the reference's, greedy agreement (share of prompts) and
    agreement = 0.92              # mean matched prefix (tokens) with the reference, exact match on
    mean_prefix = 29.5            # the question set and its ratio to the reference's
    exact_match = 0.41
    exact_match_rel = 0.98
    [[variants.measurements]]     # one per device/provider measured
    device = "cpu"                # cpu | gpu | npu
    provider = "CPUExecutionProvider"
    latency_ms_p50 = 0.12
    latency_ms_p95 = 0.2
    load_ms = 15.0
    peak_rss_bytes = 41000000
    energy_j = 0.003              # per inference, when a meter (or the CPU-time model) gave one
    meter = "model"
    [variants.build]              # provenance: source sha256, tool versions, command
    ...

Anything else is an error that names ``file:line: key``. Built by the zoo tools, read by the daemon.
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import tomli_w

from agent.errors import ManifestError
from agent.tomlfile import Checker, TomlDoc

MANIFEST = "manifest.toml"
KINDS = ("tensor", "causal-lm")
PRECISIONS = ("fp32", "fp16", "bf16", "int8", "int4", "mixed")
DEVICES = ("cpu", "gpu", "npu")
DTYPES = ("float32", "float16", "float64", "bfloat16", "int64", "int32", "int16", "int8", "uint8", "bool")
_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}$")

# ONNX Runtime's type strings -> numpy dtype names
ORT_TYPES = {
    "tensor(float)": "float32", "tensor(float16)": "float16", "tensor(double)": "float64",
    "tensor(bfloat16)": "bfloat16", "tensor(int64)": "int64", "tensor(int32)": "int32",
    "tensor(int16)": "int16", "tensor(int8)": "int8", "tensor(uint8)": "uint8", "tensor(bool)": "bool",
}


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: str
    shape: tuple[int | str, ...]

    def matches(self, other: TensorSpec) -> str | None:
        """None when ``other`` fits this spec, else why not."""
        if self.name != other.name:
            return f"name {other.name!r} != {self.name!r}"
        if self.dtype != other.dtype:
            return f"{self.name}: dtype {other.dtype} != {self.dtype}"
        if len(self.shape) != len(other.shape):
            return f"{self.name}: rank {len(other.shape)} != {len(self.shape)}"
        for i, (a, b) in enumerate(zip(self.shape, other.shape)):
            if isinstance(a, int) and isinstance(b, int) and a != b:
                return f"{self.name}: dim {i} is {b}, expected {a}"
        return None

    def to_toml(self) -> dict[str, Any]:
        return {"name": self.name, "dtype": self.dtype, "shape": list(self.shape)}


@dataclass(frozen=True)
class Measurement:
    device: str = "cpu"
    provider: str = "CPUExecutionProvider"
    latency_ms_p50: float | None = None
    latency_ms_p95: float | None = None
    load_ms: float | None = None
    peak_rss_bytes: int | None = None
    energy_j: float | None = None
    meter: str | None = None
    ttft_ms: float | None = None
    tokens_per_s: float | None = None


@dataclass(frozen=True)
class Quality:
    metric: str
    value: float
    relative: float
    perplexity: float | None = None
    perplexity_rel: float | None = None
    agreement: float | None = None
    mean_prefix: float | None = None
    exact_match: float | None = None
    exact_match_rel: float | None = None

    def figure(self, name: str) -> float | None:
        """A figure by the name a recipe floor uses (``quality_rel`` = ``relative``)."""
        if name == "quality_rel":
            return self.relative
        v = getattr(self, name, None) if name in QUALITY_FIGURES else None
        return None if v is None else float(v)


QUALITY_FIGURES = ("perplexity", "perplexity_rel", "agreement", "mean_prefix", "exact_match", "exact_match_rel")


@dataclass(frozen=True)
class Variant:
    id: str
    file: str
    precision: str
    derived_from: str = "source"
    method: str = ""
    sha256: str | None = None
    size_bytes: int | None = None
    inputs: tuple[TensorSpec, ...] | None = None
    outputs: tuple[TensorSpec, ...] | None = None
    quality: Quality | None = None
    measurements: tuple[Measurement, ...] = ()
    build: dict[str, Any] = field(default_factory=dict)
    unfit: str | None = None      # why the variant failed its recipe's floors (None = fit)

    def measurement(self, device: str) -> Measurement | None:
        for m in self.measurements:
            if m.device == device:
                return m
        return None


@dataclass(frozen=True)
class Manifest:
    name: str
    kind: str
    reference: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    variants: tuple[Variant, ...]
    folder: Path
    description: str = ""
    llm: dict[str, Any] | None = None
    warmup: str | None = None     # warm-up inputs: an .npz in the model's folder (one array per input)

    def variant(self, vid: str) -> Variant:
        for v in self.variants:
            if v.id == vid:
                return v
        from agent.errors import NotFound
        raise NotFound(f"model {self.name!r} has no variant {vid!r}; it has {', '.join(self.variant_ids())}")

    def variant_ids(self) -> list[str]:
        return [v.id for v in self.variants]

    def path_of(self, v: Variant) -> Path:
        return safe_join(self.folder, v.file)


def safe_join(folder: Path, rel: str) -> Path:
    """``folder/rel``, refusing anything that leaves ``folder`` (absolute paths, .., symlinks out)."""
    if not rel or os.path.isabs(rel) or "\x00" in rel:
        raise ManifestError(f"expected a relative file name inside {folder}, got {rel!r}")
    base = folder.resolve()
    p = (base / rel).resolve()
    if base != p and base not in p.parents:
        raise ManifestError(f"expected a file inside {folder}, got {rel!r}")
    return p


def _tensor_specs(c: Checker, key: str, required: bool) -> tuple[TensorSpec, ...] | None:
    tables = c.array_of_tables(key, required=required)
    if not tables and not required:
        return None
    if not tables:
        raise c.error(key, "expected at least one tensor")
    out = []
    for t in tables:
        t.only({"name", "dtype", "shape"})
        name = t.str("name")
        dtype = t.str("dtype", choices=DTYPES)
        shape = t.table.get("shape")
        if not isinstance(shape, list) or not all(
            (isinstance(d, int) and not isinstance(d, bool) and d >= 0) or (isinstance(d, str) and d) for d in shape
        ):
            raise t.error("shape", f"expected an array of non-negative ints or dim names, got {shape!r}")
        out.append(TensorSpec(name, dtype, tuple(shape)))
    names = [s.name for s in out]
    if len(set(names)) != len(names):
        raise c.error(key, f"duplicate tensor names in {names}")
    return tuple(out)


def _opt_num(c: Checker, key: str, integer: bool = False) -> Any:
    return c.num(key, required=False, lo=0, integer=integer)


def _measurement(c: Checker) -> Measurement:
    c.only({f for f in Measurement.__dataclass_fields__})
    return Measurement(
        device=c.str("device", choices=DEVICES),
        provider=c.str("provider"),
        latency_ms_p50=_opt_num(c, "latency_ms_p50"),
        latency_ms_p95=_opt_num(c, "latency_ms_p95"),
        load_ms=_opt_num(c, "load_ms"),
        peak_rss_bytes=_opt_num(c, "peak_rss_bytes", integer=True),
        energy_j=_opt_num(c, "energy_j"),
        meter=c.str("meter", required=False),
        ttft_ms=_opt_num(c, "ttft_ms"),
        tokens_per_s=_opt_num(c, "tokens_per_s"),
    )


def _signature_mismatch(model: tuple[TensorSpec, ...], got: tuple[TensorSpec, ...]) -> str | None:
    """Why ``got`` does not fit the model's tensors, matched by name (order does not matter: onnxruntime
    feeds and fetches by name); None when it fits."""
    want = {s.name: s for s in model}
    have = {s.name: s for s in got}
    missing = [n for n in want if n not in have]
    extra = [n for n in have if n not in want]
    if missing or extra:
        parts = ([f"missing {missing}"] if missing else []) + ([f"extra {extra}"] if extra else [])
        return f"tensors {', '.join(parts)} (model's: {list(want)})"
    for name, spec in want.items():
        why = spec.matches(have[name])
        if why:
            return why
    return None


def load_manifest(folder: Path, *, check_files: bool = True) -> Manifest:
    """Read and strictly validate ``folder/manifest.toml``."""
    doc = TomlDoc.load(folder / MANIFEST, ManifestError)
    c = Checker(doc, doc.data)
    c.only({"schema", "name", "kind", "reference", "description", "inputs", "outputs", "variants", "llm",
            "warmup"})
    schema = c.num("schema", integer=True)
    if schema != 1:
        raise c.error("schema", f"expected 1, got {schema}")
    name = c.str("name")
    if not _ID.match(name):
        raise c.error("name", f"expected a name of letters, digits, '_', '-', '.', got {name!r}")
    if name != folder.name:
        raise c.error("name", f"expected the folder's name {folder.name!r}, got {name!r}")
    kind = c.str("kind", choices=KINDS)
    reference = c.str("reference")
    inputs = _tensor_specs(c, "inputs", True) or ()
    outputs = _tensor_specs(c, "outputs", True) or ()
    llm_c = c.table_of("llm")
    if kind == "causal-lm" and llm_c is None:
        raise c.error(None, "llm: a causal-lm model needs an [llm] table")
    variants: list[Variant] = []
    seen: set[str] = set()
    for vc in c.array_of_tables("variants", required=True):
        vc.only({"id", "file", "precision", "derived_from", "method", "sha256", "size_bytes", "inputs",
                 "outputs", "quality", "measurements", "build", "unfit"})
        vid = vc.str("id")
        if not _ID.match(vid):
            raise vc.error("id", f"expected letters, digits, '_', '-', '.', got {vid!r}")
        if vid in seen:
            raise vc.error("id", f"duplicate variant id {vid!r}")
        seen.add(vid)
        rel = vc.str("file")
        try:
            path = safe_join(folder, rel)
        except ManifestError as e:
            raise vc.error("file", e.message) from None
        if check_files and not path.is_file():
            raise vc.error("file", f"expected an existing file, got missing {rel!r}")
        sha = vc.str("sha256", required=False)
        if sha is not None and not re.fullmatch(r"[0-9a-f]{64}", sha):
            raise vc.error("sha256", f"expected 64 lowercase hex digits, got {sha!r}")
        v_in = _tensor_specs(vc, "inputs", False)
        v_out = _tensor_specs(vc, "outputs", False)
        for key, mine, model in (("inputs", v_in, inputs), ("outputs", v_out, outputs)):
            if mine is not None:
                why = _signature_mismatch(model, mine)
                if why:
                    raise vc.error(key, f"expected the model's signature, got {why}")
        q = vc.table_of("quality")
        quality = None
        if q is not None:
            q.only({"metric", "value", "relative", *QUALITY_FIGURES})
            extra = {k: float(q.num(k)) for k in QUALITY_FIGURES if k in q.table}
            quality = Quality(q.str("metric"), float(q.num("value")), float(q.num("relative", lo=0)), **extra)
        unfit = vc.str("unfit", required=False)
        if unfit is not None and not unfit.strip():
            raise vc.error("unfit", "expected the reason the variant is unfit, got an empty string")
        build = vc.table_of("build")
        variants.append(Variant(
            id=vid, file=rel, precision=vc.str("precision", choices=PRECISIONS),
            derived_from=vc.str("derived_from", required=False) or "source",
            method=vc.str("method", required=False) or "",
            sha256=sha, size_bytes=vc.num("size_bytes", required=False, lo=0, integer=True),
            inputs=v_in, outputs=v_out, quality=quality,
            measurements=tuple(_measurement(m) for m in vc.array_of_tables("measurements")),
            build=dict(build.table) if build else {}, unfit=unfit,
        ))
    if not variants:
        raise c.error("variants", "expected at least one [[variants]] table")
    if reference not in seen:
        raise c.error("reference", f"expected one of the variant ids {sorted(seen)}, got {reference!r}")
    for i, v in enumerate(variants):
        if v.derived_from != "source" and v.derived_from not in seen:
            raise doc.error(["variants", i, "derived_from"],
                            f"expected 'source' or a variant id, got {v.derived_from!r}")
    warmup = c.str("warmup", required=False)
    if warmup is not None:
        try:
            wpath = safe_join(folder, warmup)
        except ManifestError as e:
            raise c.error("warmup", e.message) from None
        if check_files and not wpath.is_file():
            raise c.error("warmup", f"expected an .npz file in the model's folder, got missing {warmup!r}")
    return Manifest(name=name, kind=kind, reference=reference, inputs=inputs, outputs=outputs,
                    variants=tuple(variants), folder=folder, description=c.str("description", required=False) or "",
                    llm=dict(llm_c.table) if llm_c else None, warmup=warmup)


def load_zoo(zoo: Path) -> tuple[dict[str, Manifest], dict[str, str]]:
    """Every model under ``zoo``: (manifests by name, errors by folder name). A bad model does not hide the rest."""
    models: dict[str, Manifest] = {}
    errors: dict[str, str] = {}
    if not zoo.is_dir():
        return models, {str(zoo): "zoo directory does not exist"}
    for sub in sorted(zoo.iterdir()):
        if not sub.is_dir() or sub.name.startswith(".") or not (sub / MANIFEST).exists():
            continue
        try:
            models[sub.name] = load_manifest(sub)
        except ManifestError as e:
            errors[sub.name] = str(e)
    return models, errors


def empty_zoo_hint(zoo: Path) -> str:
    """Why ``zoo`` gave no loadable model, in words a user can act on."""
    if not zoo.is_dir():
        return f"zoo {zoo} does not exist; build one with `agentctl zoo build model_zoo/smollm2 --zoo {zoo}`"
    if any(zoo.glob("*/recipe.toml")) or (zoo / "recipe.toml").exists():
        return (f"{zoo} holds build recipes, not built models; build them with "
                f"`agentctl zoo build {zoo}/NAME --zoo ZOO` and pass --zoo ZOO")
    return (f"zoo {zoo} has no model folder with a {MANIFEST}; build one with "
            f"`agentctl zoo build model_zoo/smollm2 --zoo {zoo}`")


def _drop_none(d: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in d.items() if v is not None}


def manifest_to_toml(m: Manifest) -> dict[str, Any]:
    out: dict[str, Any] = {"schema": 1, "name": m.name, "kind": m.kind, "reference": m.reference}
    if m.description:
        out["description"] = m.description
    out["inputs"] = [s.to_toml() for s in m.inputs]
    out["outputs"] = [s.to_toml() for s in m.outputs]
    if m.llm:
        out["llm"] = m.llm
    if m.warmup:
        out["warmup"] = m.warmup
    vs = []
    for v in m.variants:
        d: dict[str, Any] = _drop_none({
            "id": v.id, "file": v.file, "precision": v.precision, "derived_from": v.derived_from,
            "method": v.method or None, "sha256": v.sha256, "size_bytes": v.size_bytes, "unfit": v.unfit,
        })
        if v.inputs is not None:
            d["inputs"] = [s.to_toml() for s in v.inputs]
        if v.outputs is not None:
            d["outputs"] = [s.to_toml() for s in v.outputs]
        if v.quality:
            d["quality"] = _drop_none(vars(v.quality).copy())
        if v.measurements:
            d["measurements"] = [_drop_none(vars(x).copy()) for x in v.measurements]
        if v.build:
            d["build"] = v.build
        vs.append(d)
    out["variants"] = vs
    return out


def save_manifest(m: Manifest) -> Path:
    """Write ``manifest.toml`` atomically (temp file + rename), so a reader never sees half a manifest."""
    m.folder.mkdir(parents=True, exist_ok=True)
    data = tomli_w.dumps(manifest_to_toml(m))
    fd, tmp = tempfile.mkstemp(dir=m.folder, prefix=".manifest.", suffix=".tmp")
    try:
        mask = os.umask(0)  # mkstemp makes 0600; give the manifest a plain file's mode (the daemon reads it)
        os.umask(mask)
        os.chmod(tmp, 0o666 & ~mask)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, m.folder / MANIFEST)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return m.folder / MANIFEST


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def with_variant(m: Manifest, v: Variant) -> Manifest:
    """A copy of ``m`` with ``v`` added or replacing the variant of the same id."""
    others = tuple(x for x in m.variants if x.id != v.id)
    return replace(m, variants=others + (v,))
