"""Zoo recipes: ``model_zoo/<model>/recipe.toml`` says where a model comes from and which variants to build.

Format (schema 1; full reference in docs/ZOO.md)::

    schema = 1
    name = "silero_vad"          # the model's folder name in the zoo
    kind = "tensor"              # manifest kind: tensor | causal-lm (a registered kind plugin)
    reference = "fp32"           # the variant quality is measured against
    description = "..."

    [source]
    format = "onnx"              # onnx | gguf | hf (a Hugging Face model folder)
    pypi = "silero-vad==6.2.3"   # a pinned wheel, fetched with `pip download --no-deps` ...
    wheel_sha256 = "..."         # ... and checked by sha256 (required with pypi)
    member = "silero_vad/data/silero_vad_16k_op15.onnx"   # the file inside the wheel
    # or: path = "model.onnx"    # a local file (or, for hf, a folder), relative to the recipe
    # or: [[source.parts]] with pypi / wheel_sha256 / member each: one file split over several wheels,
    #     concatenated in order (sha256 of the whole file required)
    sha256 = "..."               # of the model file itself (required with path and parts, optional with
                                 # pypi; for an hf folder optional: a digest of its files)

    [[sources]]                  # optional: more files for the ladder (another producer's export, ...)
    id = "vendor-int8"           # what a variant's ``source`` names
    format = "onnx"              # default onnx
    path = "model_int8.onnx"     # or pypi / wheel_sha256 / member, or [[sources.parts]], as in [source]
    sha256 = "..."

    [[variants]]
    id = "vendor-int8"
    method = "import"            # the file as is: precision read from its graph, signature matched to the
    source = "vendor-int8"       # reference by name, measured like every variant (default floor quality_rel 0.9)
    [variants.params]            # optional: map = ["GRAPH_NAME=MODEL_NAME"], ignore_extra_outputs = true

    [[variants]]
    id = "int8"
    method = "int8-dynamic"      # a registered builder (agent.zoo.build.registry)
    derived_from = "fp32"        # "source" or a variant above; default: source for the reference, else the reference
                                 # (a variant with ``source = "ID"`` starts from that [[sources]] file instead)
    precision = "int8"           # optional: overrides the builder's
    [variants.params]            # checked against the builder's declared params
    per_channel = true
    [variants.floors]            # optional: below any of these the variant is recorded as unfit
    quality_rel = 0.95           # (names: the kind's figures, see agent/zoo/floors.py)

    [eval]                       # parsed by the kind plugin (data + quality metric)
    [measure]                    # runs, warmup, cpu_watts, threads

Errors are :class:`RecipeError` with ``recipe.toml:line: key: expected ..., got ...``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent.errors import RecipeError
from agent.tomlfile import Checker, TomlDoc, type_name
from agent.zoo.build.registry import BuilderSpec, Param, builders, get_builder, get_kind, kinds
from agent.zoo.floors import DEFAULT_FLOORS
from agent.zoo.manifest import _ID, PRECISIONS

FORMATS = ("onnx", "gguf", "hf")
IMPORT = "import"   # the method that takes its source file as a variant as is (agent/zoo/build/imported.py)
_PIN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._\-]*==[A-Za-z0-9][A-Za-z0-9.+!\-]*$")
_SHA = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True)
class SourcePart:
    pypi: str
    wheel_sha256: str
    member: str


@dataclass(frozen=True)
class SourceSpec:
    format: str
    path: Path | None = None
    pypi: str | None = None
    member: str | None = None
    wheel_sha256: str | None = None
    sha256: str | None = None
    parts: tuple[SourcePart, ...] = ()

    def describe(self) -> str:
        if self.parts:
            return " + ".join(f"{p.pypi}:{p.member}" for p in self.parts)
        return f"{self.pypi}:{self.member}" if self.pypi else str(self.path)


@dataclass(frozen=True)
class VariantSpec:
    id: str
    method: str
    derived_from: str
    precision: str
    params: dict[str, Any]
    builder: BuilderSpec
    floors: dict[str, float] = field(default_factory=dict)
    source: str | None = None    # the [[sources]] id it starts from; None: [source] (or a variant above)


@dataclass(frozen=True)
class MeasureSpec:
    runs: int = 50
    warmup: int = 5
    cpu_watts: float = 10.0   # energy model: watts per fully busy core (meter = "model")
    threads: int | None = None


@dataclass(frozen=True)
class Recipe:
    path: Path
    name: str
    kind: str
    reference: str
    description: str
    source: SourceSpec
    variants: tuple[VariantSpec, ...]
    eval: Any
    measure: MeasureSpec
    sources: dict[str, SourceSpec] = field(default_factory=dict)   # [[sources]] by id
    speculative: dict[str, Any] | None = None   # causal-lm: [speculative] -> the manifest's [llm.speculative]

    def source_of(self, source_id: str | None) -> SourceSpec:
        """[source] for None, else the [[sources]] table of that id."""
        return self.source if source_id is None else self.sources[source_id]

    @property
    def dir(self) -> Path:
        return self.path.parent

    def variant(self, vid: str) -> VariantSpec:
        for v in self.variants:
            if v.id == vid:
                return v
        raise RecipeError(f"no variant {vid!r}; it has {', '.join(v.id for v in self.variants)}",
                          file=str(self.path))

    def error(self, message: str) -> RecipeError:
        return RecipeError(message, file=str(self.path))


def _param(c: Checker, key: str, p: Param) -> Any:
    if p.type is bool:
        return c.bool(key)
    if p.type is int:
        return c.num(key, lo=p.lo, hi=p.hi, integer=True)
    if p.type is float:
        return float(c.num(key, lo=p.lo, hi=p.hi))
    if p.type is str:
        return c.str(key, choices=p.choices)
    if p.type is list:
        return c.list_of_str(key)
    raise c.error(key, f"builder declares an unsupported param type {p.type!r}")


def _params(vc: Checker, spec: BuilderSpec) -> dict[str, Any]:
    out = {k: p.default for k, p in spec.params.items()}
    pc = vc.table_of("params")
    if pc is None:
        return out
    if not spec.params and pc.table:
        k = next(iter(pc.table))
        raise pc.error(k, f"unknown key; method {spec.method!r} takes no params")
    pc.only(set(spec.params))
    for k in pc.table:
        out[k] = _param(pc, k, spec.params[k])
    return out


def _wheel(c: Checker, pypi: str, wsha: str | None, member: str | None) -> None:
    if not _PIN.match(pypi):
        raise c.error("pypi", f"expected a pinned requirement 'name==version', got {pypi!r}")
    if wsha is None:
        raise c.error(None, "wheel_sha256: missing required key (a pypi source must pin the wheel's sha256)")
    if not member or member.startswith("/") or ".." in member.split("/"):
        raise c.error("member" if member else None,
                      f"expected member = the file's path inside the wheel, got {member!r}")


def _sha_key(c: Checker, key: str) -> str | None:
    val = c.str(key, required=False)
    if val is not None and not _SHA.match(val):
        raise c.error(key, f"expected 64 lowercase hex digits, got {type_name(val)}")
    return val


def _floors(vc: Checker, names: tuple[str, ...], is_reference: bool) -> dict[str, float]:
    fc = vc.table_of("floors")
    if fc is None:
        return {}
    if is_reference and fc.table:
        raise fc.error(next(iter(fc.table)), "the reference is what floors are measured against; "
                                             "give floors to the other variants")
    fc.only(set(names))
    return {k: float(fc.num(k, lo=0)) for k in fc.table}


def _source(c: Checker, base: Path, where: str = "source") -> SourceSpec:
    """[source] (``where = "source"``) or one [[sources]] table (``"sources"``: ``id`` allowed, format
    defaults to onnx)."""
    extra = where != "source"
    c.only({"format", "path", "pypi", "member", "wheel_sha256", "sha256", "parts", *(("id",) if extra else ())})
    fmt = c.str("format", required=not extra, choices=FORMATS) or "onnx"
    path, pypi = c.str("path", required=False), c.str("pypi", required=False)
    part_cs = c.array_of_tables("parts")
    if sum(x is not None and x != [] for x in (path, pypi, part_cs)) != 1:
        raise c.error(None, f"expected exactly one of {where}.path (a local file or folder), {where}.pypi (a "
                            f"pinned wheel) or [[{where}.parts]] (one file split over pinned wheels)")
    sha, wsha = _sha_key(c, "sha256"), _sha_key(c, "wheel_sha256")
    member = c.str("member", required=False)
    if part_cs:
        if member is not None or wsha is not None:
            raise c.error("member" if member is not None else "wheel_sha256", f"only valid with {where}.pypi")
        if sha is None:
            raise c.error(None, "sha256: missing required key (parts must pin the whole file's sha256)")
        parts = []
        for pc in part_cs:
            pc.only({"pypi", "wheel_sha256", "member"})
            pp, pw, pm = pc.str("pypi"), _sha_key(pc, "wheel_sha256"), pc.str("member")
            _wheel(pc, pp, pw, pm)
            assert pw is not None
            parts.append(SourcePart(pp, pw, pm))
        return SourceSpec(fmt, sha256=sha, parts=tuple(parts))
    if pypi is not None:
        _wheel(c, pypi, wsha, member)
        return SourceSpec(fmt, pypi=pypi, member=member, wheel_sha256=wsha, sha256=sha)
    if member is not None or wsha is not None:
        raise c.error("member" if member is not None else "wheel_sha256", f"only valid with {where}.pypi")
    if sha is None and fmt != "hf":
        raise c.error(None, "sha256: missing required key (a local source must pin its sha256)")
    assert path is not None
    p = Path(path).expanduser()
    return SourceSpec(fmt, path=p if p.is_absolute() else base / p, sha256=sha)


def _extra_sources(c: Checker, base: Path) -> dict[str, SourceSpec]:
    out: dict[str, SourceSpec] = {}
    for sc in c.array_of_tables("sources"):
        sid = sc.str("id")
        if not _ID.match(sid) or sid == "source":
            raise sc.error("id", f"expected letters, digits, '_', '-', '.' (not 'source'), got {sid!r}")
        if sid in out:
            raise sc.error("id", f"duplicate source id {sid!r}")
        out[sid] = _source(sc, base, "sources")
    return out


def _variant_source(vc: Checker, sources: dict[str, SourceSpec]) -> str | None:
    sid = vc.str("source", required=False)
    if sid is None:
        return None
    if sid not in sources:
        have = f"the [[sources]] ids {sorted(sources)}" if sources else "the id of a [[sources]] table (it has none)"
        raise vc.error("source", f"expected {have}, got {sid!r}")
    parent = vc.str("derived_from", required=False)
    if parent not in (None, "source"):
        raise vc.error("derived_from", f"a variant with source = {sid!r} starts from that file; expected "
                                       f"'source' or no derived_from, got {parent!r}")
    return sid


def _measure(c: Checker | None) -> MeasureSpec:
    if c is None:
        return MeasureSpec()
    c.only({"runs", "warmup", "cpu_watts", "threads"})
    d = MeasureSpec()
    return MeasureSpec(
        runs=c.num("runs", required=False, lo=1, hi=100000, integer=True) or d.runs,
        warmup=c.num("warmup", required=False, lo=0, hi=10000, integer=True) if "warmup" in c.table else d.warmup,
        cpu_watts=float(c.num("cpu_watts", required=False, lo=0.001, hi=1000) or d.cpu_watts),
        threads=c.num("threads", required=False, lo=1, hi=1024, integer=True),
    )


def load_recipe(path: Path | str) -> Recipe:
    """Read and strictly validate a recipe. ``path`` is the TOML file or the folder holding recipe.toml."""
    p = Path(path)
    if p.is_dir():
        p = p / "recipe.toml"
    doc = TomlDoc.load(p, RecipeError)
    c = Checker(doc, doc.data)
    c.only({"schema", "name", "kind", "reference", "description", "source", "sources", "variants", "eval",
            "measure", "speculative"})
    schema = c.num("schema", integer=True)
    if schema != 1:
        raise c.error("schema", f"expected 1, got {schema}")
    name = c.str("name")
    if not _ID.match(name):
        raise c.error("name", f"expected letters, digits, '_', '-', '.', got {name!r}")
    kind = c.str("kind", choices=kinds())
    plugin = get_kind(kind)
    assert plugin is not None
    reference = c.str("reference")
    src_c = c.table_of("source", required=True)
    assert src_c is not None
    source = _source(src_c, p.parent.resolve())
    sources = _extra_sources(c, p.parent.resolve())
    variants: list[VariantSpec] = []
    seen: set[str] = set()
    vtables = c.array_of_tables("variants", required=True)
    if not vtables:
        raise c.error("variants", "expected at least one [[variants]] table")
    for vc in vtables:
        vc.only({"id", "method", "derived_from", "precision", "params", "floors", "source"})
        vid = vc.str("id")
        if not _ID.match(vid):
            raise vc.error("id", f"expected letters, digits, '_', '-', '.', got {vid!r}")
        if vid in seen:
            raise vc.error("id", f"duplicate variant id {vid!r}")
        method = vc.str("method")
        spec = get_builder(method)
        if spec is None:
            raise vc.error("method", f"expected a registered method ({', '.join(sorted(builders()))}), got {method!r}")
        src_id = _variant_source(vc, sources)
        if method == IMPORT and vc.str("derived_from", required=False) not in (None, "source"):
            raise vc.error("derived_from", f"method {IMPORT!r} takes a source file as is; expected 'source' "
                                           f"(or source = \"ID\" of a [[sources]] table), "
                                           f"got {vc.table['derived_from']!r}")
        starts_at_source = vid == reference or src_id is not None or method == IMPORT
        parent = vc.str("derived_from", required=False) or ("source" if starts_at_source else reference)
        if parent != "source" and parent not in seen and "derived_from" not in vc.table:
            raise vc.error("id", f"derived_from: missing, and its default (the reference {reference!r}) is not "
                                 f"defined above; define the reference first or set derived_from")
        if parent != "source" and parent not in seen:
            raise vc.error("derived_from", f"expected 'source' or a variant defined above ({sorted(seen)}), "
                                           f"got {parent!r}")
        in_fmt = (sources[src_id] if src_id else source).format if parent == "source" else "onnx"
        if in_fmt not in spec.accepts:
            raise vc.error("method", f"method {method!r} takes {'/'.join(spec.accepts)} input, "
                                     f"got {in_fmt} (derived_from = {parent!r})")
        if vid == reference and parent != "source":
            raise vc.error("derived_from", f"expected the reference variant to derive from 'source', got {parent!r}")
        if method == IMPORT and "precision" in vc.table:
            raise vc.error("precision", f"method {IMPORT!r} reads the precision from the file's graph "
                                        "(agent/zoo/precision.py); remove the key")
        prec = vc.str("precision", required=False, choices=PRECISIONS) or spec.precision
        floors = _floors(vc, plugin.floors, vid == reference)
        if method == IMPORT and vid != reference and vc.table_of("floors") is None:
            floors = dict(DEFAULT_FLOORS)   # a file from elsewhere must show it is this model
        variants.append(VariantSpec(vid, method, parent, prec, _params(vc, spec), spec, floors, src_id))
        seen.add(vid)
    if reference not in seen:
        raise c.error("reference", f"expected one of the variant ids {sorted(seen)}, got {reference!r}")
    ev = c.table_of("eval", required=True)
    assert ev is not None
    eval_spec = plugin.parse_eval(ev, p.parent.resolve())
    return Recipe(path=p, name=name, kind=kind, reference=reference,
                  description=c.str("description", required=False) or "", source=source,
                  variants=tuple(variants), eval=eval_spec, measure=_measure(c.table_of("measure")),
                  sources=sources, speculative=_speculative(c, kind, seen))


def _speculative(c: Checker, kind: str, ids: set[str]) -> dict[str, Any] | None:
    """``[speculative]`` (causal-lm): copied into the manifest's ``[llm.speculative]``, for the variants built
    (agent.llm.speculative.draft_for reads it when a variant is loaded)."""
    if "speculative" not in c.table:
        return None
    if kind != "causal-lm":
        raise c.error("speculative", f"speculative decoding is for causal-lm models, not {kind!r}")
    t = c.table["speculative"]
    from agent.errors import LoadError
    from agent.llm.speculative import draft_for

    try:
        if not isinstance(t, dict) or not isinstance(t.get("drafts"), dict) or not t["drafts"]:
            raise LoadError(f"expected a table with a non-empty 'drafts' table, got {t!r}")
        for served in t["drafts"]:
            if served not in ids:
                raise LoadError(f"drafts: {served!r} is not a variant of this recipe ({sorted(ids)})")
            draft_for({"speculative": t}, served, ids)
    except LoadError as e:
        raise c.error("speculative", str(e)) from None
    return dict(t)


def load_eval(path: Path | str, kind: str) -> Any:
    """Only the ``[eval]`` table of a recipe, parsed by ``kind``'s plugin (measurement subprocesses use
    this, so they need no builder registered outside ``agent.zoo.build``)."""
    p = Path(path)
    doc = TomlDoc.load(p / "recipe.toml" if p.is_dir() else p, RecipeError)
    plugin = get_kind(kind)
    if plugin is None:
        raise RecipeError(f"expected a registered kind ({', '.join(kinds())}), got {kind!r}", file=str(p))
    ev = Checker(doc, doc.data).table_of("eval", required=True)
    assert ev is not None
    return plugin.parse_eval(ev, p.parent.resolve() if not p.is_dir() else p.resolve())
