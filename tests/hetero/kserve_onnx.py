"""A KServe ModelServer (PyPI ``kserve``) serving ONNX files through onnxruntime: the *remote* side.

Not part of the agent: this is the stock KServe Python server with a small custom ``kserve.Model`` that
wraps an onnxruntime session, as a KServe user would write one. Tests start it on loopback::

    python tests/hetero/kserve_onnx.py --serve NAME=PATH [--serve NAME=PATH ...] --http_port N

KServe 0.21's REST server binds 0.0.0.0 unconditionally; this wrapper makes uvicorn bind 127.0.0.1 so
the test server is reachable from this machine only. kserve parses its own flags (``--http_port``) from
the same command line.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

ORT_TO_V2 = {"tensor(float)": "FP32", "tensor(float16)": "FP16", "tensor(double)": "FP64",
             "tensor(int64)": "INT64", "tensor(int32)": "INT32", "tensor(int16)": "INT16",
             "tensor(int8)": "INT8", "tensor(uint8)": "UINT8", "tensor(bool)": "BOOL"}


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--serve", action="append", required=True, help="NAME=PATH of an ONNX file")
    ours, _rest = ap.parse_known_args(argv)

    import numpy as np
    import onnxruntime as ort
    import uvicorn
    from kserve import InferOutput, InferRequest, InferResponse, Model, ModelServer

    real_config = uvicorn.Config.__init__

    def loopback_config(self: Any, *a: Any, **kw: Any) -> None:
        kw["host"] = "127.0.0.1"
        real_config(self, *a, **kw)

    uvicorn.Config.__init__ = loopback_config  # type: ignore[method-assign]

    class OnnxModel(Model):  # type: ignore[misc]
        def __init__(self, name: str, path: str) -> None:
            super().__init__(name)
            self.path = path
            self.load()

        def load(self) -> bool:
            so = ort.SessionOptions()
            so.intra_op_num_threads = 1
            self.sess = ort.InferenceSession(self.path, so, providers=["CPUExecutionProvider"])
            self.out_names = [o.name for o in self.sess.get_outputs()]
            self.ready = True
            return True

        def _types(self, args: Any) -> list[dict[str, Any]]:
            return [{"name": a.name, "datatype": ORT_TO_V2.get(a.type, a.type),
                     "shape": [d if isinstance(d, int) else -1 for d in a.shape]} for a in args]

        def get_input_types(self) -> list[dict[str, Any]]:
            return self._types(self.sess.get_inputs())

        def get_output_types(self) -> list[dict[str, Any]]:
            return self._types(self.sess.get_outputs())

        async def predict(self, payload: InferRequest, headers: Any = None,
                          response_headers: Any = None) -> InferResponse:
            feed = {i.name: i.as_numpy() for i in payload.inputs}
            outs = self.sess.run(self.out_names, feed)
            binary = bool(payload.request_outputs and any(o.binary_data for o in payload.request_outputs))
            result = []
            for name, arr in zip(self.out_names, outs, strict=True):
                arr = np.ascontiguousarray(arr)
                o = InferOutput(name=name, shape=list(arr.shape), datatype=ORT_TO_V2[f"tensor({_ort_name(arr)})"])
                o.set_data_from_numpy(arr, binary_data=binary)
                result.append(o)
            return InferResponse(response_id=payload.id or "", model_name=self.name, infer_outputs=result,
                                 use_binary_outputs=binary)

    models = []
    for spec in ours.serve:
        name, _, path = spec.partition("=")
        models.append(OnnxModel(name, path))
    ModelServer(enable_grpc=False, workers=1).start(models)
    return 0


def _ort_name(arr: Any) -> str:
    return {"float32": "float", "float16": "float16", "float64": "double", "int64": "int64", "int32": "int32",
            "int16": "int16", "int8": "int8", "uint8": "uint8", "bool": "bool"}[arr.dtype.name]


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
