"""The tensor backend: one variant's ONNX Runtime session (plain, split or remote) and ``run``.

``load`` opens the variant through :func:`agent.runtime.session.open_variant` (explicit device, no silent
CPU fallback), checks it against the manifest's signature, warms it up and, when the model batches,
measures whether its rows are independent. ``run`` {inputs: [descs]} + the tensors' bytes ->
{outputs, run_ms, cpu_s} + the output buffers. An onnxruntime failure is mapped by
:func:`agent.errors.from_run_error`: the request's fault is InvalidParams, the execution provider's
ExecutionFailed (retryable).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from agent.errors import LoadError, WorkerError, from_run_error
from agent.ipc import protocol as P
from agent.runtime.backends import Call, Channel, Reply

ONE_THREAD_MAX_FILE = 32 << 20   # a one-thread twin session only for variants this small (weights held twice)
ONE_THREAD_ROUNDS = 30           # interleaved timing runs of each session at load ...
ONE_THREAD_BUDGET_S = 0.25       # ... or fewer (at least 5) when they take longer than this
ONE_THREAD_GAIN = 0.9            # kept only when its runs take at most this share of the pool session's
ONE_THREAD_ATTEMPTS = 3          # timed again (up to this many times) while the ratio is within 0.9-1.11


def twin_possible(size: int, device: str, split: bool) -> str | None:
    """Why a variant of ``size`` bytes on ``device`` can have no one-thread twin, or None when it can
    (the backend then measures whether to keep one; the runtime's memory estimate counts it)."""
    if split:
        return "not a plain local variant"
    if (device or "cpu").split(":")[0] != "cpu":
        return "not on the CPU"
    if size > ONE_THREAD_MAX_FILE:
        return f"variant over {ONE_THREAD_MAX_FILE >> 20} MiB"
    return None


class OnnxBackend:
    name = "onnx"

    def __init__(self) -> None:
        self.sess: Any = None
        self.out_names: list[str] = []
        self.closed = False
        self.one: Any = None          # a one-thread twin for requests up to one_max_bytes of input
        self.one_max_bytes = 0

    def load(self, params: Mapping[str, Any], channel: Channel) -> dict[str, Any]:
        from agent.runtime.session import open_variant, warm_up

        if self.sess is not None or self.closed:
            raise LoadError("this worker already held a variant")
        sess, info = open_variant(dict(params))   # plain, split (parts on their devices) or remote (KServe v2)
        expect = params.get("signature")
        if expect:
            check_signature(expect, info)
        t0 = time.perf_counter()
        info["warmup"] = warm_up(sess, int(params.get("warmup_runs", 3)), params.get("warmup_file"))
        info["warmup_ms"] = (time.perf_counter() - t0) * 1e3
        if params.get("batch_check"):
            info["batch_invariant"] = batch_invariant(sess)
        self.sess = sess
        self.out_names = [o.name for o in sess.get_outputs()]
        info["one_thread"] = self._one_thread(params, sess, info)
        return info

    def _one_thread(self, params: Mapping[str, Any], sess: Any, info: Mapping[str, Any]) -> dict[str, Any]:
        """A small request (one row) of a small model runs faster on one thread than on the intra-op pool:
        a pool of threads that do not spin (``allow_spinning=0``) wakes a second thread for every operator,
        and on these VMs that wake-up costs more than the work it takes (1 KB MLP: 14.6 against 18.8 µs in
        process, and a lane request 72.5 against 89-99 µs). Measured here, not assumed: a twin session with
        one thread is opened and both are timed on the warm-up inputs, interleaved (30 rounds, fewer past
        ONE_THREAD_BUDGET_S: a swap waits for this). The twin serves requests no larger than those inputs
        only when it was faster by at least 10 % (the median of the rounds' ratios). A ratio between 0.9
        and 1/0.9 is timed again, up to ONE_THREAD_ATTEMPTS times in all: while other work holds the second
        core (another worker loading), the pool's second thread wakes late, the first one does the whole
        run, and the pool looks as fast as one thread. CPU only, plain variants of at most
        ONE_THREAD_MAX_FILE bytes (the twin holds the weights a second time)."""
        from agent.runtime.session import open_session, sample_inputs

        path = Path(str(params.get("path") or ""))
        if params.get("remote") or params.get("parts") or not path.is_file():
            return {"used": False, "why": "not a plain local variant"}
        if params.get("threads") == 1:
            return {"used": False, "why": "one thread already"}
        cpu = (info.get("providers") or [""])[0] == "CPUExecutionProvider"
        why = twin_possible(path.stat().st_size, "cpu" if cpu else "other", False)
        if why is not None:
            return {"used": False, "why": why}
        try:
            feed = sample_inputs(sess)
            one, _ = open_session(path, str(params.get("device") or "cpu"), threads=1)
            attempts = 0
            while True:
                one_ms, full_ms, ratio = self._time_both(sess, one, feed)
                attempts += 1
                if attempts >= ONE_THREAD_ATTEMPTS or not ONE_THREAD_GAIN < ratio < 1.0 / ONE_THREAD_GAIN:
                    break   # clear either way; in between, other loads may have blurred it: again, later
                time.sleep(0.05)
        except Exception as e:  # noqa: BLE001 - guessed inputs or a second session may fail: serve without it
            return {"used": False, "why": f"not measured: {' '.join(str(e).split())[:120]}"}
        used = ratio <= ONE_THREAD_GAIN
        if used:
            self.one, self.one_max_bytes = one, sum(int(v.nbytes) for v in feed.values())
        return {"used": used, "one_thread_ms": round(one_ms, 4), "pool_ms": round(full_ms, 4),
                "ratio": round(ratio, 3), "attempts": attempts, "max_input_bytes": self.one_max_bytes}

    def _time_both(self, sess: Any, one: Any, feed: Mapping[str, Any]) -> tuple[float, float, float]:
        """(one-thread median ms, pool median ms, median of the rounds' one/pool ratios): each round runs
        both back to back, so a round's ratio shares its noise."""
        import numpy as np

        full_t: list[float] = []
        one_t: list[float] = []
        stop = time.perf_counter() + ONE_THREAD_BUDGET_S
        for i in range(ONE_THREAD_ROUNDS):
            if i >= 5 and time.perf_counter() > stop:   # a swap must not wait long for this
                break
            for s_, ts in ((sess, full_t), (one, one_t)):
                t0 = time.perf_counter()
                s_.run(self.out_names, feed)
                ts.append((time.perf_counter() - t0) * 1e3)
        ratio = float(np.median([a / b for a, b in zip(one_t, full_t, strict=True) if b > 0] or [1.0]))
        return float(np.median(one_t)), float(np.median(full_t)), ratio

    def run(self, call: Call) -> Reply | None:
        if self.sess is None:
            raise WorkerError("backend is closed" if self.closed else "no variant loaded")
        if call.method != "run":
            raise WorkerError(f"the onnx backend has no method {call.method!r}")
        feed = P.tensors_from(call.params["inputs"], call.payload)
        small = self.one is not None and memoryview(call.payload).nbytes <= self.one_max_bytes
        sess = self.one if small else self.sess
        c0, t0 = time.process_time(), time.perf_counter()
        try:
            outs = sess.run(self.out_names, feed)
        except Exception as e:  # noqa: BLE001 - ours keep their type; ORT's: bad input or EP failure
            raise from_run_error(e) from None
        run_ms = (time.perf_counter() - t0) * 1e3
        cpu_s = time.process_time() - c0
        del feed
        descs, bufs = P.tensor_descs(dict(zip(self.out_names, outs, strict=True)))
        return {"outputs": descs, "run_ms": run_ms, "cpu_s": cpu_s}, bufs

    def close(self) -> None:
        self.sess = self.one = None
        self.closed = True


def batch_invariant(sess: Any) -> bool:
    """Whether a row's outputs do not depend on the other rows of its batch (so dynamic batching may stack
    requests). Measured, not assumed: dynamic int8 quantization, for one, picks one activation scale for
    the whole batch, so a request's outputs would change with its neighbours."""
    import numpy as np

    from agent.runtime.session import sample_inputs

    one = sample_inputs(sess)
    rng = np.random.default_rng(1)
    other = {k: (rng.standard_normal(v.shape) * 50).astype(v.dtype) if v.dtype.kind == "f" else v
             for k, v in one.items()}
    try:
        alone = sess.run(None, one)
        both = sess.run(None, {k: np.concatenate([one[k], other[k]]) for k in one})
    except Exception:  # noqa: BLE001 - any failure to run a batch of 2 (shape, EP) means not batchable
        return False
    return all(b.shape[:1] == (2,) and a.shape[:1] == (1,) and np.allclose(a[0], b[0], rtol=1e-5, atol=1e-6)
               for a, b in zip(alone, both, strict=True))


def check_signature(expect: Mapping[str, Any], info: Mapping[str, Any]) -> None:
    """LoadError when the variant's inputs or outputs (name, dtype) are not the manifest's."""
    for key in ("inputs", "outputs"):
        want = [(t["name"], t["dtype"]) for t in expect.get(key, [])]
        got = [(t["name"], t["dtype"]) for t in info.get(key, [])]
        if want and sorted(want) != sorted(got):
            raise LoadError(f"variant {key} {got} do not match the model's signature {want}")
