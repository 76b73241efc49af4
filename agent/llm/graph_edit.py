"""Build-time edits of model-builder decoder graphs (needs ``onnx``; the daemon never imports this).

``add_logits_to_keep(model.onnx)``: a new int64 input ``logits_to_keep`` [1] and a Slice before the LM
head, so a run computes the vocabulary projection only for the last ``logits_to_keep`` positions. A
40-token prefill then does one LM-head row instead of 40 (49152 × 576 multiply-adds each on SmolLM2);
a speculative verification asks for k+1 rows, perplexity for all of them. The engine passes it when
the graph has it (``agent.llm.decoder``). The weights (``model.onnx.data``) are not touched: only the
graph file is rewritten, atomically.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from agent.errors import BuildError

INPUT = "logits_to_keep"


def add_logits_to_keep(model_path: Path) -> bool:
    """Edit ``model_path`` in place; False when it already has the input. BuildError when the graph has
    no single LM-head node producing ``logits``."""
    import onnx
    from onnx import TensorProto, helper

    m = onnx.load(str(model_path), load_external_data=False)
    g = m.graph
    if any(i.name == INPUT for i in g.input):
        return False
    heads = [n for n in g.node if "logits" in n.output]
    if len(heads) != 1 or heads[0].op_type not in ("MatMul", "MatMulNBits", "Gemm"):
        raise BuildError(f"{model_path}: expected one MatMul/MatMulNBits producing 'logits', got "
                         f"{[n.op_type for n in heads]}")
    head = heads[0]
    hidden = head.input[0]
    g.input.append(helper.make_tensor_value_info(INPUT, TensorProto.INT64, [1]))
    g.initializer.extend([helper.make_tensor("ltk_end", TensorProto.INT64, [1], [2**62]),
                          helper.make_tensor("ltk_axis", TensorProto.INT64, [1], [1])])
    start = "ltk_start"
    sliced = hidden + "_last"
    nodes = [helper.make_node("Neg", [INPUT], [start], name="/lm_head/logits_to_keep/Neg"),
             helper.make_node("Slice", [hidden, start, "ltk_end", "ltk_axis"], [sliced],
                              name="/lm_head/logits_to_keep/Slice")]
    idx = list(g.node).index(head)
    for k, n in enumerate(nodes):
        g.node.insert(idx + k, n)
    head.input[0] = sliced
    for o in g.output:
        if o.name == "logits" and len(o.type.tensor_type.shape.dim) == 3:
            o.type.tensor_type.shape.dim[1].dim_param = "logits_length"
    fd, tmp = tempfile.mkstemp(dir=model_path.parent, prefix=f".{model_path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        onnx.save(m, tmp)
        os.chmod(tmp, 0o644)
        os.replace(tmp, model_path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return True
