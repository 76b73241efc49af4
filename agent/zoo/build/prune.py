"""Unstructured magnitude pruning: zero the smallest weights of each MatMul/Gemm/Conv weight tensor.

The file stays dense fp32 (ONNX Runtime's CPU kernels gain no speed from zeros), so the builder reports
what pruning buys on disk: the sparsity reached and the gzip-compressed size against the parent's.
"""

from __future__ import annotations

import gzip
import shutil
from pathlib import Path

from agent.errors import BuildError
from agent.zoo.build.quant import MAIN, _load, _save, constants_to_initializers
from agent.zoo.build.registry import BuildContext, BuildResult, Param, register_builder


def gzip_size(path: Path) -> int:
    """Bytes of ``path`` gzip-compressed at level 6 (the usual download/storage compression)."""

    class _Count:
        n = 0

        def write(self, b: bytes) -> int:
            self.n += len(b)
            return len(b)

        def flush(self) -> None:
            pass

    c = _Count()
    with open(path, "rb") as f, gzip.GzipFile(fileobj=c, mode="wb", compresslevel=6, mtime=0) as g:  # type: ignore[arg-type]
        shutil.copyfileobj(f, g)
    return c.n


@register_builder("magnitude-prune", precision="fp32", params={
    "sparsity": Param(float, 0.5, "share of each weight tensor set to zero", lo=0.0, hi=0.99),
    "op_types": Param(list, ["MatMul", "Gemm", "Conv"], "ops whose constant weight is pruned"),
    "min_size": Param(int, 256, "skip weights with fewer elements (biases, tiny tensors)", lo=1),
})
def magnitude_prune(ctx: BuildContext) -> BuildResult:
    """Unstructured magnitude pruning per weight tensor; reports sparsity and gzip size."""
    import numpy as np
    from onnx import numpy_helper

    p = ctx.params
    m = _load(ctx.input_path)
    constants_to_initializers(m)
    inits = {t.name: t for t in m.graph.initializer}
    targets = {n.input[1] for n in m.graph.node
               if n.op_type in p["op_types"] and len(n.input) > 1 and n.input[1] in inits}
    pruned = zeros = total_w = 0
    for name in sorted(targets):
        t = inits[name]
        w = numpy_helper.to_array(t)
        if w.dtype.kind != "f" or w.size < p["min_size"]:
            continue
        k = int(w.size * p["sparsity"])
        if k:
            thresh = np.partition(np.abs(w).ravel(), k - 1)[k - 1]
            w = np.where(np.abs(w) <= thresh, np.zeros_like(w), w)
        t.CopyFrom(numpy_helper.from_array(w.astype(w.dtype), name))
        pruned += 1
        zeros += int((w == 0).sum())
        total_w += w.size
    if not pruned:
        raise BuildError(f"no {'/'.join(p['op_types'])} weight with >= {p['min_size']} elements to prune")
    all_params = sum(int(np.prod(t.dims)) for t in m.graph.initializer)
    _save(m, ctx.out_dir / MAIN)
    gz, gz_parent = gzip_size(ctx.out_dir / MAIN), gzip_size(ctx.input_path)
    return BuildResult(MAIN, info={
        "tensors_pruned": pruned, "sparsity": round(zeros / total_w, 5),
        "sparsity_all_params": round(zeros / max(all_params, 1), 5),
        "gzip_bytes": gz, "parent_gzip_bytes": gz_parent, "gzip_ratio": round(gz / gz_parent, 4),
    })
