"""The plug-in points of the zoo build framework (the contract; see docs/ZOO.md).

Two registries:

* **builders**, keyed by a recipe variant's ``method``: ``@register_builder("int8-dynamic", ...)``
  on a function ``fn(ctx: BuildContext) -> BuildResult`` that writes one variant into ``ctx.out_dir``.
* **kinds**, keyed by the manifest ``kind`` (``tensor``, ``causal-lm``): ``register_kind(KindPlugin(...))``
  gives the parser of the recipe's ``[eval]`` table and the measurer of a built variant.

Builder modules live in the ``agent.zoo.build`` package; every module there is imported (once, on the
first lookup) so its decorators run. Registration only fills a dict: modules must import heavy tools
(onnx, onnxruntime.quantization, torch, gguf) inside the builder function, never at import time.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import pkgutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agent.errors import BuildError
from agent.zoo.manifest import Measurement, Quality, TensorSpec, Variant

if TYPE_CHECKING:
    from agent.tomlfile import Checker
    from agent.zoo.recipe import Recipe, VariantSpec


@dataclass(frozen=True)
class Param:
    """One builder parameter as a recipe's ``[variants.params]`` may give it."""

    type: type  # bool | int | float | str | list (of str)
    default: Any
    help: str = ""
    lo: float | None = None
    hi: float | None = None
    choices: tuple[str, ...] | None = None


@dataclass(frozen=True)
class BuildContext:
    """What a builder gets. Write only under ``out_dir``; never touch the zoo otherwise."""

    recipe: Recipe
    spec: VariantSpec            # .id, .method, .params (validated, defaults filled), .derived_from
    input_path: Path               # the file to start from: the source (ONNX or GGUF) or the parent's main file
    reference_path: Path | None    # the reference variant's main file, None while building the reference
    out_dir: Path                  # an empty temp dir inside the zoo; renamed into place on success
    log: Callable[[str], None]     # one human line per call (progress output)
    calibration: Callable[[], list[dict[str, Any]]]  # tensor kinds: full input feeds (numpy) from [eval]

    @property
    def params(self) -> dict[str, Any]:
        return self.spec.params


@dataclass(frozen=True)
class BuildResult:
    main: str                                  # relative path of the model file inside out_dir
    precision: str | None = None               # overrides the registered precision (fp32|fp16|int8|int4|mixed)
    info: dict[str, Any] = field(default_factory=dict)  # recorded under [variants.build.info]
    llm: dict[str, Any] | None = None          # the manifest's [llm] table (causal-lm reference builders)


Builder = Callable[[BuildContext], BuildResult]


@dataclass(frozen=True)
class BuilderSpec:
    method: str
    fn: Builder
    precision: str
    params: dict[str, Param]
    tools: tuple[str, ...]          # distributions whose versions enter the rebuild hash and provenance
    accepts: tuple[str, ...]        # input formats: "onnx" (a built variant or an ONNX source), "gguf"
    uses_eval: bool                 # the output depends on [eval] data (calibration, distillation)
    version: int                    # bump when the builder's output changes for the same inputs
    doc: str


@dataclass(frozen=True)
class MeasureContext:
    recipe: Recipe
    variant_id: str
    model_path: Path                 # the built variant's main file (still in its temp dir)
    reference_path: Path | None      # None when measuring the reference itself
    reference: Variant | None        # the reference's manifest entry (measured), None when measuring it
    work_dir: Path                   # scratch space, deleted afterwards
    log: Callable[[str], None]


@dataclass(frozen=True)
class MeasureResult:
    measurement: Measurement
    quality: Quality | None
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    info: dict[str, Any] = field(default_factory=dict)  # recorded under [variants.build.eval]


@dataclass(frozen=True)
class KindPlugin:
    kind: str                                             # manifest kind: "tensor" | "causal-lm"
    parse_eval: Callable[[Checker, Path], Any]          # ([eval] table, recipe dir) -> eval spec object
    measure: Callable[[MeasureContext], MeasureResult]
    eval_fingerprint: Callable[[Any], str]                # stable text that changes when the eval data does
    calibration: Callable[[Recipe, Path], list[dict[str, Any]]] | None = None  # (recipe, model) -> feeds
    floors: tuple[str, ...] = ("quality_rel",)           # figure names a recipe's [variants.floors] may bound


_BUILDERS: dict[str, BuilderSpec] = {}
_KINDS: dict[str, KindPlugin] = {}
_loaded = False


def register_builder(method: str, *, precision: str, params: dict[str, Param] | None = None,
                     tools: Sequence[str] = ("onnxruntime", "onnx"), accepts: Sequence[str] = ("onnx",),
                     uses_eval: bool = False, version: int = 1) -> Callable[[Builder], Builder]:
    """Decorator: make ``fn`` the builder of recipe variants with ``method = "<method>"``."""

    def deco(fn: Builder) -> Builder:
        if method in _BUILDERS and _BUILDERS[method].fn is not fn:
            raise BuildError(f"builder method {method!r} registered twice")
        _BUILDERS[method] = BuilderSpec(method, fn, precision, dict(params or {}), tuple(tools), tuple(accepts),
                                        uses_eval, version, (fn.__doc__ or "").strip().split("\n")[0])
        return fn

    return deco


def register_kind(plugin: KindPlugin) -> None:
    _KINDS[plugin.kind] = plugin


def _load_all() -> None:
    global _loaded
    if _loaded:
        return
    _loaded = True
    import agent.zoo.build as pkg

    for mod in pkgutil.iter_modules(pkg.__path__):
        if not mod.name.startswith("_"):
            importlib.import_module(f"agent.zoo.build.{mod.name}")


def get_builder(method: str) -> BuilderSpec | None:
    _load_all()
    return _BUILDERS.get(method)


def builders() -> dict[str, BuilderSpec]:
    _load_all()
    return dict(_BUILDERS)


def get_kind(kind: str) -> KindPlugin | None:
    _load_all()
    return _KINDS.get(kind)


def kinds() -> list[str]:
    _load_all()
    return sorted(_KINDS)


def tool_versions(names: Sequence[str]) -> dict[str, str]:
    """Installed versions of ``names`` (distribution names); "absent" when not installed."""
    out = {}
    for n in names:
        try:
            out[n] = importlib.metadata.version(n)
        except importlib.metadata.PackageNotFoundError:
            out[n] = "absent"
    return out
