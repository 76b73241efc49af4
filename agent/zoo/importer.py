"""``agentctl zoo import``: add a user's ONNX file to the zoo as a variant of a model.

The file is opened with onnxruntime to read its signature before anything is written. A new model
folder gets a manifest whose reference is this variant; an existing model's signature must match.
The file (and any external-data files it names) is copied into ``ZOO/<model>/<variant>-<sha8>/`` through
a temp dir and a rename, then the manifest is replaced atomically.
"""

from __future__ import annotations

import datetime as _dt
import os
import shutil
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from agent.errors import InvalidParams, LoadError
from agent.zoo.manifest import (
    _ID,
    MANIFEST,
    ORT_TYPES,
    PRECISIONS,
    Manifest,
    TensorSpec,
    Variant,
    _signature_mismatch,
    load_manifest,
    save_manifest,
    sha256_file,
    with_variant,
)


def read_signature(path: Path) -> tuple[tuple[TensorSpec, ...], tuple[TensorSpec, ...]]:
    """(inputs, outputs) as onnxruntime sees them; LoadError when it cannot open the file."""
    import onnxruntime as ort

    if not path.is_file():
        raise LoadError(f"{path}: no such file")
    so = ort.SessionOptions()
    so.log_severity_level = 3
    try:
        sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    except Exception as e:  # onnxruntime's own exception types (InvalidProtobuf, Fail, NotImplemented ...)
        raise LoadError(f"{path}: not a model onnxruntime can load: {' '.join(str(e).split())[:300]}") from e

    def specs(args: Any) -> tuple[TensorSpec, ...]:
        out = []
        for a in args:
            if a.type not in ORT_TYPES:
                raise LoadError(f"{path}: {a.name}: unsupported tensor type {a.type}")
            shape = tuple(d if isinstance(d, int) else (d or f"dim{i}") for i, d in enumerate(a.shape or []))
            out.append(TensorSpec(a.name, ORT_TYPES[a.type], shape))
        return tuple(out)

    return specs(sess.get_inputs()), specs(sess.get_outputs())


def _external_files(path: Path) -> list[str]:
    """Relative names of the external-data files the model refers to (needs onnx; [] without it)."""
    try:
        import onnx
        from onnx.external_data_helper import uses_external_data
    except ImportError:
        return []
    m = onnx.load(str(path), load_external_data=False)
    names = set()
    for t in m.graph.initializer:
        if uses_external_data(t):
            for kv in t.external_data:
                if kv.key == "location":
                    names.add(kv.value)
    return sorted(names)


def copy_model(path: Path, dest: Path, extra: list[str] | None = None) -> list[str]:
    """Copy the model file and the external-data files it names (``extra``, default: read from the file)
    into the folder ``dest``; returns the external names. LoadError for one missing or outside its folder."""
    names = _external_files(path) if extra is None else extra
    shutil.copyfile(path, dest / path.name)
    for name in names:
        src = (path.parent / name).resolve()
        if path.parent.resolve() not in src.parents or not src.is_file():
            raise LoadError(f"{path}: external data {name!r} is missing or outside the model's folder")
        (dest / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, dest / name)
    return names


def guess_precision(path: Path) -> str:
    """The precision the graph stores its weights in (``agent.zoo.precision``); fp32 without onnx."""
    try:
        from agent.zoo.precision import detect
    except ImportError:
        return "fp32"
    try:
        return detect(path).label
    except ImportError:
        return "fp32"


CLI_FLAGS = ("--map", "--ignore-extra-outputs")   # how fit errors name the two ways to fit a file


def fit_graph(path: Path, out: Path, model_in: tuple[TensorSpec, ...], model_out: tuple[TensorSpec, ...],
              rename: dict[str, str], drop_extra_outputs: bool, flags: tuple[str, str] = CLI_FLAGS) -> list[str]:
    """Write ``path`` to ``out`` with its tensors renamed (``rename``: graph name -> model name), outputs
    the model lacks dropped (only when ``drop_extra_outputs``) and inputs no node reads dropped; returns
    what changed, one phrase each. InvalidParams for what cannot be fitted (an extra input that is used),
    naming ``flags`` (the rename option, the drop option) as the fixes."""
    import onnx
    from onnx.external_data_helper import uses_external_data

    m = onnx.load(str(path), load_external_data=False)
    if any(uses_external_data(t) for t in m.graph.initializer) and (
            rename or drop_extra_outputs):
        raise LoadError(f"{path}: renaming or dropping tensors of a model with external data is not "
                        "supported; save it as one file first")
    done: list[str] = []
    graph_names = {i.name for i in m.graph.input} | {o.name for o in m.graph.output}
    for old in rename:
        if old not in graph_names:
            raise InvalidParams(f"{flags[0]} {old}=...: the graph has no input or output {old!r} "
                                f"(it has {sorted(graph_names)})")

    def ren(name: str) -> str:
        return rename.get(name, name)

    def walk(g: Any) -> None:
        for coll in (g.input, g.output, g.value_info):
            for vi in coll:
                vi.name = ren(vi.name)
        for n in g.node:
            n.input[:] = [ren(x) for x in n.input]
            n.output[:] = [ren(x) for x in n.output]
            for a in n.attribute:
                if a.type == onnx.AttributeProto.GRAPH:
                    walk(a.g)
                elif a.type == onnx.AttributeProto.GRAPHS:
                    for sg in a.graphs:
                        walk(sg)

    if rename:
        walk(m.graph)
        done.append("renamed " + ", ".join(f"{a}->{b}" for a, b in rename.items()))
    want_out = {t.name for t in model_out}
    extra_out = [o.name for o in m.graph.output if o.name not in want_out]
    if extra_out:
        if not drop_extra_outputs:
            raise InvalidParams(f"{path}: outputs {extra_out} are not the model's; pass {flags[1]} "
                                "to drop them from this variant")
        keep = [o for o in m.graph.output if o.name in want_out]
        del m.graph.output[:]
        m.graph.output.extend(keep)
        done.append(f"dropped outputs {extra_out}")
    want_in = {t.name for t in model_in}
    used = {x for n in m.graph.node for x in n.input}
    for g in _subgraphs(m.graph):
        used |= {x for n in g.node for x in n.input}
    extra_in = [i.name for i in m.graph.input if i.name not in want_in and i.name not in
                {t.name for t in m.graph.initializer}]
    if extra_in:
        busy = [n for n in extra_in if n in used]
        if busy:
            raise InvalidParams(f"{path}: inputs {busy} are not the model's and the graph reads them")
        keep_in = [i for i in m.graph.input if i.name not in extra_in]
        del m.graph.input[:]
        m.graph.input.extend(keep_in)
        done.append(f"dropped unused inputs {extra_in}")
    onnx.save(m, str(out))
    return done


Signature = tuple[tuple[TensorSpec, ...], tuple[TensorSpec, ...]]   # (inputs, outputs)


@dataclass(frozen=True)
class Fit:
    path: Path                        # the file to use: the one given, or its fitted copy
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    changes: list[str]                # what fitting changed, one phrase each; [] when used as is


def fit_to_model(path: Path, work: Path, model: Signature | None, rename: dict[str, str],
                 drop_extra_outputs: bool, flags: tuple[str, str] = CLI_FLAGS) -> Fit:
    """``path`` fitted to ``model``'s signature (None: the file's own, renamed): with a rename map or
    ``drop_extra_outputs`` the copy in ``work`` is rewritten (:func:`fit_graph`); without either, only
    inputs that no node reads are dropped, and only when that is all that keeps the file from fitting.
    The caller checks the result with :func:`signature_problem`."""
    inputs, outputs = read_signature(path)
    if model is None:
        model = (_renamed(inputs, rename), _renamed(outputs, rename))
    extra_in = {t.name for t in inputs} - {t.name for t in model[0]}
    outputs_fit = {t.name for t in outputs} == {t.name for t in model[1]}
    if not (rename or drop_extra_outputs or (extra_in and outputs_fit)):
        return Fit(path, inputs, outputs, [])
    changes = fit_graph(path, work / path.name, model[0], model[1], rename, drop_extra_outputs, flags)
    return Fit(work / path.name, *read_signature(work / path.name), changes)


def _renamed(ts: tuple[TensorSpec, ...], rename: dict[str, str]) -> tuple[TensorSpec, ...]:
    return tuple(TensorSpec(rename.get(t.name, t.name), t.dtype, t.shape) for t in ts)


def signature_problem(model: Signature, got: Signature, name: str = "the model") -> str | None:
    """``inputs do not match <name>: <why>`` (or outputs), matched by name; None when ``got`` fits."""
    for what, want, have in (("inputs", model[0], got[0]), ("outputs", model[1], got[1])):
        why = _signature_mismatch(want, have)
        if why:
            return f"{what} do not match {name}: {why}"
    return None


def parse_map(items: list[str], flag: str = "--map") -> dict[str, str]:
    """``["GRAPH_NAME=MODEL_NAME", ...]`` -> {graph name: model name}; InvalidParams naming ``flag``."""
    out: dict[str, str] = {}
    for item in items:
        graph, eq, name = item.partition("=")
        if not eq or not graph.strip() or not name.strip():
            raise InvalidParams(f"{flag}: expected GRAPH_NAME=MODEL_NAME, got {item!r}")
        out[graph.strip()] = name.strip()
    return out


def _subgraphs(g: Any) -> list[Any]:
    import onnx

    out = []
    for n in g.node:
        for a in n.attribute:
            if a.type == onnx.AttributeProto.GRAPH:
                out += [a.g, *_subgraphs(a.g)]
            elif a.type == onnx.AttributeProto.GRAPHS:
                for sg in a.graphs:
                    out += [sg, *_subgraphs(sg)]
    return out


def remove_variant(zoo: Path, model: str, variant: str | None = None) -> Manifest | None:
    """Remove one variant (never the reference while others depend on it) or, with no variant, the whole
    model; returns the manifest left (None when the model is gone)."""
    folder = zoo / model
    if not (folder / MANIFEST).exists():
        have = sorted(p.name for p in zoo.iterdir() if (p / MANIFEST).exists()) if zoo.is_dir() else []
        raise InvalidParams(f"no model {model!r} in {zoo}" + (f"; it has {', '.join(have)}" if have else ""))
    m = load_manifest(folder, check_files=False)
    if variant is None or (variant == m.reference and len(m.variants) == 1):
        if variant is not None:
            m.variant(variant)
        shutil.rmtree(folder)
        return None
    v = m.variant(variant)
    if variant == m.reference:
        raise InvalidParams(f"{variant!r} is the reference of {model!r} (quality is measured against it); "
                            f"import another reference with `zoo import {model} {variant} FILE --replace`, "
                            f"or remove the whole model with `zoo remove {model}`")
    left = replace(m, variants=tuple(x for x in m.variants if x.id != variant))
    save_manifest(left)
    if "/" in v.file:
        shutil.rmtree(folder / v.file.split("/")[0], ignore_errors=True)
    return left


def import_variant(zoo: Path, model: str, variant: str, path: Path, *, precision: str | None = None,
                   replace_existing: bool = False, command: str = "", rename: dict[str, str] | None = None,
                   drop_extra_outputs: bool = False) -> Manifest:
    """Copy ``path`` into the zoo as ``model/variant``; returns the new manifest.

    Tensors are matched by name, in any order. ``rename`` (graph name -> model name) and
    ``drop_extra_outputs`` fit a file from another producer to the model's signature (the copy is
    rewritten; the source is untouched); inputs no node reads are dropped. Replacing the reference needs
    the same signature, and marks the other variants' quality stale (re-measure them)."""
    if not _ID.match(model):
        raise InvalidParams(f"model name: expected letters, digits, '_', '-', '.', got {model!r}")
    if not _ID.match(variant):
        raise InvalidParams(f"variant id: expected letters, digits, '_', '-', '.', got {variant!r}")
    if precision is not None and precision not in PRECISIONS:
        raise InvalidParams(f"--precision: expected one of {', '.join(PRECISIONS)}, got {precision!r}")
    path = Path(path)
    source_path, source_sha = path, None
    inputs, outputs = read_signature(path)
    folder = zoo / model
    old: Manifest | None = load_manifest(folder) if (folder / MANIFEST).exists() else None
    fitted: list[str] = []
    work = Path(tempfile.mkdtemp(prefix="agent-import-"))
    try:
        if old is not None or rename:
            sig = (old.inputs, old.outputs) if old is not None else None
            fit = fit_to_model(path, work, sig, rename or {}, drop_extra_outputs)
            if fit.path != path:
                source_sha = sha256_file(source_path)
            path, inputs, outputs, fitted = fit.path, fit.inputs, fit.outputs, fit.changes
        if old is not None:
            why = signature_problem((old.inputs, old.outputs), (inputs, outputs), f"model {model!r}")
            if why:
                raise InvalidParams(f"{source_path}: {why}; "
                                    "--map GRAPH_NAME=MODEL_NAME renames a tensor, --ignore-extra-outputs "
                                    "drops outputs the model lacks")
            if variant in old.variant_ids() and not replace_existing:
                raise InvalidParams(f"model {model!r} already has variant {variant!r} (use --replace to overwrite)")
        return _place(zoo, model, variant, path, old, inputs, outputs, precision, command, source_path,
                      source_sha, fitted)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _place(zoo: Path, model: str, variant: str, path: Path, old: Manifest | None,
           inputs: tuple[TensorSpec, ...], outputs: tuple[TensorSpec, ...], precision: str | None, command: str,
           source_path: Path, source_sha: str | None, fitted: list[str]) -> Manifest:
    folder = zoo / model
    prec = precision or guess_precision(path)
    extra = _external_files(path)
    sha = sha256_file(path)
    created = not folder.exists()
    folder.mkdir(parents=True, exist_ok=True)
    prev = old.variant(variant) if old is not None and variant in old.variant_ids() else None
    final = folder / f"{variant}-{sha[:8]}"
    tmp = Path(tempfile.mkdtemp(dir=folder, prefix=f".tmp-import-{variant}-"))
    placed = False
    try:
        copy_model(path, tmp, extra)
        if sha256_file(tmp / path.name) != sha:
            raise LoadError(f"{path}: the file changed while it was being copied")
        mask = os.umask(0)
        os.umask(mask)
        os.chmod(tmp, 0o777 & ~mask)
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        placed = True
        v = Variant(id=variant, file=f"{final.name}/{path.name}", precision=prec, derived_from="source",
                    method="import", sha256=sha, size_bytes=(final / path.name).stat().st_size,
                    inputs=inputs, outputs=outputs,
                    build={"source": str(source_path.resolve()), "source_sha256": source_sha or sha,
                           "command": command or f"agentctl zoo import {model} {variant} {source_path}",
                           "imported_at": _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
                           **({"fitted": fitted} if fitted else {})})
        if old is None:
            m = Manifest(name=model, kind="tensor", reference=variant, inputs=inputs, outputs=outputs,
                         variants=(v,), folder=folder)
        elif variant == old.reference:
            # a new reference: every other variant's quality was measured against the old one
            stale = tuple(replace(x, quality=None) if x.id != variant else x for x in old.variants)
            m = with_variant(replace(old, variants=stale), v)
        else:
            m = with_variant(old, v)
        save_manifest(m)
    except BaseException:
        if placed:
            shutil.rmtree(final, ignore_errors=True)
        raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        if created and not (folder / MANIFEST).exists():
            shutil.rmtree(folder, ignore_errors=True)
    if prev is not None and "/" in prev.file and prev.file.split("/")[0] != final.name:
        shutil.rmtree(folder / prev.file.split("/")[0], ignore_errors=True)
    return m
