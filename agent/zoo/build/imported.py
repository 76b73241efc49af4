"""Builder ``import``: a recipe source file taken into the ladder as is (another producer's export, an
int8 file made elsewhere). Its precision is read from its graph (agent/zoo/precision.py), never declared;
its tensors are matched to the reference's by name (``map`` renames, ``ignore_extra_outputs`` drops, inputs
no node reads are dropped); the runner then measures it like every built variant.
"""

from __future__ import annotations

import shutil
from typing import Any

from agent.errors import BuildError, InvalidParams
from agent.zoo.build.registry import BuildContext, BuildResult, Param, register_builder

FLAGS = ("params.map", "params.ignore_extra_outputs = true")


@register_builder("import", precision="fp32", accepts=("onnx",), tools=("onnxruntime", "onnx"), params={
    "map": Param(list, [], "GRAPH_NAME=MODEL_NAME: rename the file's tensors to the reference's"),
    "ignore_extra_outputs": Param(bool, False, "drop outputs the reference lacks"),
})
def import_file(ctx: BuildContext) -> BuildResult:
    """The source file as is; precision read from its graph, tensors matched to the reference by name."""
    from agent.zoo.importer import copy_model, fit_to_model, parse_map, read_signature, signature_problem
    from agent.zoo.precision import detect

    p = ctx.params
    work = ctx.out_dir / ".fit"
    work.mkdir()
    try:
        rename = parse_map(list(p["map"]), "params.map")
        model = read_signature(ctx.reference_path) if ctx.reference_path is not None else None
        fit = fit_to_model(ctx.input_path, work, model, rename, p["ignore_extra_outputs"], FLAGS)
        if model is not None:
            why = signature_problem(model, (fit.inputs, fit.outputs), "the reference's")
            if why:
                raise BuildError(f"{ctx.input_path.name}: {why}; params map = [\"GRAPH_NAME=MODEL_NAME\"] renames "
                                 "a tensor, ignore_extra_outputs = true drops outputs the reference lacks")
        if fit.changes:
            shutil.move(str(fit.path), str(ctx.out_dir / fit.path.name))
            external: list[str] = []
        else:
            external = copy_model(ctx.input_path, ctx.out_dir)
    except InvalidParams as e:
        raise BuildError(e.message) from e
    finally:
        shutil.rmtree(work, ignore_errors=True)
    got = detect(ctx.out_dir / ctx.input_path.name)
    ctx.log(f"{ctx.input_path.name}: {got.label} ({got.evidence})")
    info: dict[str, Any] = {"precision_evidence": got.evidence}
    if fit.changes:
        info["fitted"] = fit.changes
    if external:
        info["external_data"] = external
    return BuildResult(ctx.input_path.name, precision=got.label, info=info)
