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


def import_variant(zoo: Path, model: str, variant: str, path: Path, *, precision: str | None = None,
                   replace_existing: bool = False, command: str = "") -> Manifest:
    """Copy ``path`` into the zoo as ``model/variant``; returns the new manifest."""
    if not _ID.match(model):
        raise InvalidParams(f"model name: expected letters, digits, '_', '-', '.', got {model!r}")
    if not _ID.match(variant):
        raise InvalidParams(f"variant id: expected letters, digits, '_', '-', '.', got {variant!r}")
    if precision is not None and precision not in PRECISIONS:
        raise InvalidParams(f"--precision: expected one of {', '.join(PRECISIONS)}, got {precision!r}")
    path = Path(path)
    inputs, outputs = read_signature(path)
    folder = zoo / model
    old: Manifest | None = load_manifest(folder) if (folder / MANIFEST).exists() else None
    if old is not None:
        for what, model_sig, got in (("inputs", old.inputs, inputs), ("outputs", old.outputs, outputs)):
            why = _signature_mismatch(model_sig, got)
            if why:
                raise InvalidParams(f"{path}: {what} do not match model {model!r}: {why}")
        if variant in old.variant_ids() and not replace_existing:
            raise InvalidParams(f"model {model!r} already has variant {variant!r} (use --replace to overwrite)")
        if variant == old.reference and replace_existing:
            raise InvalidParams(f"{variant!r} is the reference of {model!r}; it cannot be replaced by an import")
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
        shutil.copyfile(path, tmp / path.name)
        for name in extra:
            src = (path.parent / name).resolve()
            if path.parent.resolve() not in src.parents or not src.is_file():
                raise LoadError(f"{path}: external data {name!r} is missing or outside the model's folder")
            (tmp / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, tmp / name)
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
                    build={"source": str(path.resolve()), "source_sha256": sha,
                           "command": command or f"agentctl zoo import {model} {variant} {path}",
                           "imported_at": _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")})
        if old is None:
            m = Manifest(name=model, kind="tensor", reference=variant, inputs=inputs, outputs=outputs,
                         variants=(v,), folder=folder)
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
