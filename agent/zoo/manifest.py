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

A *split* variant (``agent.zoo.build.split``) lists its parts; each part runs on its own device, in order,
and ``file`` is the first part. Its measurements use ``device = "split"``::

    [[variants.parts]]
    file = "split-ab12cd34/part0.onnx"
    device = "cpu"                # a device spec as for a pin: cpu, gpu, npu, PROVIDER[:kind]
    sha256 = "..."

A *remote* variant is served by a KServe v2 server (Triton, KServe); it has no file (``file = ""``) and
its measurements use ``device = "remote"`` (latency includes the network; energy is the local cost)::

    [variants.remote]
    endpoint = "http://10.0.0.5:8000"
    model = "mlp"
    version = "1"                 # optional
    timeout_s = 5.0               # optional

    [serving]                     # optional (docs/SERVING.md)
    max_batch = 16                # tensor: stack up to this many rows of concurrent requests into one run;
                                  # causal-lm: up to this many streams share each decode step
    max_queue_delay_ms = 2.0      # the longest a request waits for others to join its batch
    cache_bytes = 8388608         # exact-match response cache, bounded in bytes (0: off)

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
DEVICES = ("cpu", "gpu", "npu", "remote", "split")
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
        for i, (a, b) in enumerate(zip(self.shape, other.shape, strict=False)):
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
class Part:
    file: str
    device: str = "cpu"
    sha256: str | None = None


@dataclass(frozen=True)
class Remote:
    endpoint: str
    model: str
    version: str | None = None
    timeout_s: float = 5.0


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
    parts: tuple[Part, ...] = ()
    remote: Remote | None = None

    @property
    def placement(self) -> str:
        """Where the variant runs by its nature: ``remote``, ``split`` or ``cpu`` (a plain file)."""
        return "remote" if self.remote is not None else "split" if self.parts else "cpu"

    def measurement(self, device: str) -> Measurement | None:
        for m in self.measurements:
            if m.device == device:
                return m
        return None


@dataclass(frozen=True)
class ServingConfig:
    """Per-model serving options: dynamic batching (``max_batch`` > 1) and the response cache."""
    max_batch: int = 1
    max_queue_delay_ms: float = 0.0
    cache_bytes: int = 0

    @property
    def batching(self) -> bool:
        return self.max_batch > 1


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
    serving: ServingConfig = ServingConfig()
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


def _check_file(c: Checker, folder: Path, rel: str, check_files: bool) -> None:
    try:
        path = safe_join(folder, rel)
    except ManifestError as e:
        raise c.error("file", e.message) from None
    if check_files and not path.is_file():
        raise c.error("file", f"expected an existing file, got missing {rel!r}")


def _parts(vc: Checker, folder: Path, check_files: bool) -> tuple[Part, ...]:
    out = []
    for pc in vc.array_of_tables("parts"):
        pc.only({"file", "device", "sha256"})
        rel = pc.str("file")
        _check_file(pc, folder, rel, check_files)
        sha = pc.str("sha256", required=False)
        if sha is not None and not re.fullmatch(r"[0-9a-f]{64}", sha):
            raise pc.error("sha256", f"expected 64 lowercase hex digits, got {sha!r}")
        dev = pc.str("device", required=False) or "cpu"
        if dev in ("remote", "split"):
            raise pc.error("device", f"expected an EP device (cpu, gpu, npu, PROVIDER[:kind]), got {dev!r}")
        out.append(Part(rel, dev, sha))
    if len(out) == 1:
        raise vc.error("parts", "expected at least two parts in a split variant")
    return tuple(out)


def _remote(vc: Checker) -> Remote | None:
    rc = vc.table_of("remote")
    if rc is None:
        return None
    rc.only({"endpoint", "model", "version", "timeout_s"})
    url = rc.str("endpoint")
    if not re.fullmatch(r"https?://[A-Za-z0-9.\-\[\]:]+(/[A-Za-z0-9._~/\-]*)?", url):
        raise rc.error("endpoint", f"expected http://host:port or https://host:port[/prefix], got {url!r}")
    model = rc.str("model")
    if not _ID.match(model):
        raise rc.error("model", f"expected a model name of letters, digits, '_', '-', '.', got {model!r}")
    version = rc.str("version", required=False)
    timeout = rc.num("timeout_s", required=False, lo=0.01)
    return Remote(url, model, version, float(timeout) if timeout is not None else 5.0)


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


def _serving(c: Checker | None, kind: str, inputs: tuple[TensorSpec, ...],
             outputs: tuple[TensorSpec, ...]) -> ServingConfig:
    if c is None:
        return ServingConfig()
    c.only({"max_batch", "max_queue_delay_ms", "cache_bytes"})
    max_batch = c.num("max_batch", required=False, lo=1, hi=4096, integer=True) or 1
    delay = c.num("max_queue_delay_ms", required=False, lo=0, hi=1000)
    cache = c.num("cache_bytes", required=False, lo=0, integer=True) or 0
    if max_batch > 1 and kind == "causal-lm":   # continuous batching: streams join at the next step
        if delay:
            raise c.error("max_queue_delay_ms", "a causal-lm model batches decode steps: new streams join at "
                                                "the next step, nothing waits")
        if max_batch > 256:
            raise c.error("max_batch", f"expected at most 256 streams for a causal-lm model, got {max_batch}")
    elif max_batch > 1:
        if kind != "tensor":
            raise c.error("max_batch", f"dynamic batching is for tensor models; this model is {kind}")
        if delay is None:
            raise c.error("max_batch", "batching needs max_queue_delay_ms (how long a request may wait)")
        for spec in (*inputs, *outputs):
            if not spec.shape or not isinstance(spec.shape[0], str):
                dim = spec.shape[0] if spec.shape else "no dimensions"
                raise c.error("max_batch", f"batching needs a free batch dimension, but tensor {spec.name!r} "
                                           f"has first dimension {dim!r} (expected a dim name such as 'batch')")
    elif delay is not None and delay > 0:
        raise c.error("max_queue_delay_ms", "has no effect unless max_batch > 1")
    return ServingConfig(int(max_batch), float(delay or 0.0), int(cache))


def load_manifest(folder: Path, *, check_files: bool = True) -> Manifest:
    """Read and strictly validate ``folder/manifest.toml``."""
    doc = TomlDoc.load(folder / MANIFEST, ManifestError)
    c = Checker(doc, doc.data)
    c.only({"schema", "name", "kind", "reference", "description", "inputs", "outputs", "variants", "llm",
            "serving", "warmup"})
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
                 "outputs", "quality", "measurements", "build", "unfit", "parts", "remote"})
        vid = vc.str("id")
        if not _ID.match(vid):
            raise vc.error("id", f"expected letters, digits, '_', '-', '.', got {vid!r}")
        if vid in seen:
            raise vc.error("id", f"duplicate variant id {vid!r}")
        seen.add(vid)
        remote = _remote(vc)
        rel = vc.str("file") if remote is None else (vc.str("file", required=False) or "")
        if remote is not None and rel:
            raise vc.error("file", "a remote variant has no local file; expected \"\"")
        if remote is None:
            _check_file(vc, folder, rel, check_files)
        parts = _parts(vc, folder, check_files)
        if parts and remote is not None:
            raise vc.error("parts", "a variant is either split (parts) or remote, not both")
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
            build=dict(build.table) if build else {}, unfit=unfit, parts=parts, remote=remote,
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
                    llm=dict(llm_c.table) if llm_c else None, warmup=warmup,
                    serving=_serving(c.table_of("serving"), kind, inputs, outputs))


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
    if m.serving != ServingConfig():
        out["serving"] = vars(m.serving).copy()
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
        if v.parts:
            d["parts"] = [_drop_none(vars(x).copy()) for x in v.parts]
        if v.remote is not None:
            d["remote"] = _drop_none(vars(v.remote).copy())
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
    return replace(m, variants=(*others, v))
