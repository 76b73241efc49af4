"""Evaluation data for tensor models: the recipe's ``[eval]`` table and the feeds it yields.

``[eval]`` keys (kind ``tensor``)::

    data = "wav"            # wav | npz | random
    files = ["/usr/share/sounds/alsa/*.wav"]   # globs, absolute or relative to the recipe (wav, npz)
    calibration = 3         # the first N files (sorted) / samples calibrate; the rest are held out
    metric = "threshold"    # threshold | top1 | cosine: agreement with the reference on held-out data
    output = "output"       # the output compared (default: the first)
    threshold = 0.5         # for metric = "threshold"
    # wav only:
    input = "input"         # the input fed with audio windows
    sample_rate = 16000
    window = 512
    context = 0             # samples of the previous audio prepended to each window
    # random only:
    count = 64              # samples (calibration + held out)
    seed = 0
    [eval.dims]             # values for symbolic dims (default 1)
    batch = 1
    [eval.state]            # recurrent models: output name -> input name, carried window to window
    stateN = "state"
    [eval.constants]        # fixed inputs (dtype from the model), e.g. sr = 16000
    sr = 16000

A *stream* is a list of feed dicts (external inputs only); state inputs start at zeros and carry the
named outputs from one step to the next. Non-recurrent data is one stream per sample.
"""

from __future__ import annotations

import glob
import hashlib
import json
import wave
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from agent.errors import BuildError
from agent.tomlfile import Checker

DATA = ("wav", "npz", "random")
METRICS = ("threshold", "top1", "cosine")
Stream = list[dict[str, np.ndarray]]


@dataclass(frozen=True)
class TensorEval:
    data: str
    files: tuple[str, ...] = ()
    calibration: int = 1
    metric: str = "cosine"
    output: str | None = None
    threshold: float = 0.5
    input: str | None = None
    sample_rate: int = 16000
    window: int = 512
    context: int = 0
    count: int = 64
    seed: int = 0
    dims: dict[str, int] = field(default_factory=dict)
    state: dict[str, str] = field(default_factory=dict)
    constants: dict[str, float] = field(default_factory=dict)
    base: Path = Path(".")

    def paths(self) -> list[Path]:
        out: set[Path] = set()
        for pat in self.files:
            p = Path(pat).expanduser()
            full = p if p.is_absolute() else self.base / p
            out.update(Path(x) for x in glob.glob(str(full)))
        return sorted(out)


def parse_eval(c: Checker, base: Path) -> TensorEval:
    c.only({"data", "files", "calibration", "metric", "output", "threshold", "input", "sample_rate", "window",
            "context", "count", "seed", "dims", "state", "constants"})
    data = c.str("data", choices=DATA)
    files = tuple(c.list_of_str("files", required=data != "random") or ())
    if data != "random" and not files:
        raise c.error("files", "expected at least one file glob")
    if data == "wav" and not c.str("input", required=False):
        raise c.error(None, "input: missing required key (the input fed with audio windows)")
    tables: dict[str, dict[str, Any]] = {}
    for key, kind in (("dims", int), ("state", str), ("constants", float)):
        t = c.table_of(key)
        vals: dict[str, Any] = {}
        if t is not None:
            for k in t.table:
                if kind is int:
                    vals[k] = t.num(k, lo=1, integer=True)
                elif kind is str:
                    vals[k] = t.str(k)
                else:
                    vals[k] = t.num(k)
        tables[key] = vals
    d = TensorEval(data=data)
    return TensorEval(
        data=data, files=files,
        calibration=c.num("calibration", required=False, lo=1, integer=True) or d.calibration,
        metric=c.str("metric", required=False, choices=METRICS) or d.metric,
        output=c.str("output", required=False),
        threshold=float(c.num("threshold", required=False) if "threshold" in c.table else d.threshold),
        input=c.str("input", required=False),
        sample_rate=c.num("sample_rate", required=False, lo=1, integer=True) or d.sample_rate,
        window=c.num("window", required=False, lo=1, integer=True) or d.window,
        context=c.num("context", required=False, lo=0, integer=True) or 0,
        count=c.num("count", required=False, lo=2, hi=100000, integer=True) or d.count,
        seed=c.num("seed", required=False, lo=0, integer=True) or 0,
        dims=tables["dims"], state=tables["state"], constants=tables["constants"], base=base,
    )


def fingerprint(ev: TensorEval) -> str:
    h = hashlib.sha256()
    d = {k: v for k, v in vars(ev).items() if k != "base"}
    h.update(json.dumps(d, sort_keys=True, default=str).encode())
    for p in ev.paths():
        h.update(p.name.encode())
        h.update(hashlib.sha256(p.read_bytes()).digest())
    return h.hexdigest()


def read_wav(path: Path, rate: int) -> np.ndarray:
    """Mono float32 in [-1, 1] at ``rate`` Hz (low-pass + linear resampling when the file's rate differs)."""
    try:
        with wave.open(str(path), "rb") as w:
            ch, width, sr, n = w.getnchannels(), w.getsampwidth(), w.getframerate(), w.getnframes()
            raw = w.readframes(n)
    except (wave.Error, EOFError, OSError) as e:
        raise BuildError(f"eval: cannot read WAV {path}: {e}") from e
    if width == 2:
        x = np.frombuffer(raw, "<i2").astype(np.float32) / 32768.0
    elif width == 1:
        x = (np.frombuffer(raw, np.uint8).astype(np.float32) - 128.0) / 128.0
    elif width == 4:
        x = np.frombuffer(raw, "<i4").astype(np.float32) / 2147483648.0
    else:
        raise BuildError(f"eval: {path}: expected 8/16/32-bit PCM, got {8 * width}-bit")
    x = x[: len(x) // ch * ch].reshape(-1, ch).mean(axis=1)
    if sr == rate:
        return x.astype(np.float32)
    if rate < sr:  # windowed-sinc low-pass at the new Nyquist before decimating
        cutoff = 0.5 * rate / sr * 0.95
        taps = np.arange(-64, 65)
        h = 2 * cutoff * np.sinc(2 * cutoff * taps) * np.hamming(len(taps))
        x = np.convolve(x, h / h.sum(), mode="same")
    t_new = np.arange(int(len(x) * rate / sr)) * (sr / rate)
    return np.interp(t_new, np.arange(len(x)), x).astype(np.float32)


def _wav_stream(ev: TensorEval, path: Path) -> Stream:
    assert ev.input is not None
    x = read_wav(path, ev.sample_rate)
    out: Stream = []
    prev = np.zeros(ev.context, np.float32)
    for i in range(len(x) // ev.window):
        win = x[i * ev.window:(i + 1) * ev.window]
        feed = np.concatenate([prev, win]) if ev.context else win
        out.append({ev.input: feed[None, :].astype(np.float32)})
        if ev.context:
            prev = win[-ev.context:]
    return out


def _npz_stream(path: Path) -> Stream:
    try:
        with np.load(path, allow_pickle=False) as z:
            return [{k: z[k] for k in z.files}]
    except (OSError, ValueError) as e:
        raise BuildError(f"eval: cannot read {path}: {e}") from e


def _shape(shape: list[Any], dims: dict[str, int]) -> tuple[int, ...]:
    return tuple(d if isinstance(d, int) else dims.get(str(d), 1) for d in shape)


def random_streams(ev: TensorEval, inputs: list[tuple[str, str, list[Any]]]) -> list[Stream]:
    rng = np.random.default_rng(ev.seed)
    streams = []
    for _ in range(ev.count):
        feed = {}
        for name, dtype, shape in inputs:
            if name in ev.state.values() or name in ev.constants:
                continue
            shp = _shape(shape, ev.dims)
            if dtype.startswith("float"):
                feed[name] = rng.standard_normal(shp).astype(dtype)
            elif dtype == "bool":
                feed[name] = rng.integers(0, 2, shp).astype(bool)
            else:
                feed[name] = rng.integers(0, 8, shp).astype(dtype)
        streams.append([feed])
    return streams


def streams(ev: TensorEval, inputs: list[tuple[str, str, list[Any]]]) -> tuple[list[Stream], list[Stream]]:
    """(calibration streams, held-out streams). ``inputs``: the model's (name, numpy dtype, shape)."""
    if ev.data == "random":
        all_s = random_streams(ev, inputs)
    else:
        paths = ev.paths()
        if len(paths) <= ev.calibration:
            raise BuildError(f"eval: files {list(ev.files)} matched {len(paths)} file(s); expected more than "
                             f"calibration = {ev.calibration} (the rest are held out)")
        all_s = [_wav_stream(ev, p) if ev.data == "wav" else _npz_stream(p) for p in paths]
    if len(all_s) <= ev.calibration:
        raise BuildError(f"eval: {len(all_s)} samples, expected more than calibration = {ev.calibration}")
    return all_s[: ev.calibration], all_s[ev.calibration:]


def complete_feed(ev: TensorEval, feed: dict[str, np.ndarray], inputs: list[tuple[str, str, list[Any]]],
                  state: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Add constants and the current recurrent state (zeros at the start of a stream)."""
    out = dict(feed)
    for name, dtype, shape in inputs:
        if name in out:
            continue
        if name in ev.constants:
            out[name] = np.array(ev.constants[name], dtype=dtype)
        elif name in state:
            out[name] = state[name]
        elif name in ev.state.values():
            out[name] = np.zeros(_shape(shape, ev.dims), dtype=dtype)
        else:
            raise BuildError(f"eval: no data for input {name!r}; give it in [eval.constants] or [eval.state]")
    return out


def run_stream(sess: Any, ev: TensorEval, stream: Stream, inputs: list[tuple[str, str, list[Any]]],
               out_names: list[str], timer: Any = None) -> tuple[list[dict[str, np.ndarray]], list[list[Any]]]:
    """Run one stream with state carried; returns (full feeds, outputs per step)."""
    state: dict[str, np.ndarray] = {}
    feeds, outs = [], []
    for step in stream:
        feed = complete_feed(ev, step, inputs, state)
        res = timer(feed) if timer is not None else sess.run(out_names, feed)
        feeds.append(feed)
        outs.append(res)
        for o, i in ev.state.items():
            state[i] = res[out_names.index(o)]
    return feeds, outs


def quality(ev: TensorEval, ref: list[np.ndarray], got: list[np.ndarray]) -> tuple[float, dict[str, Any]]:
    """(agreement in [0, 1], details) of ``got`` against ``ref``: one array per step, same shapes."""
    if len(ref) != len(got):
        raise BuildError(f"eval: {len(got)} outputs vs {len(ref)} from the reference")
    r = np.concatenate([a.astype(np.float64).reshape(1, -1) if a.ndim < 2 else
                        a.astype(np.float64).reshape(a.shape[0], -1) for a in ref])
    g = np.concatenate([a.astype(np.float64).reshape(1, -1) if a.ndim < 2 else
                        a.astype(np.float64).reshape(a.shape[0], -1) for a in got])
    if r.shape != g.shape:
        raise BuildError(f"eval: output shape {g.shape} differs from the reference's {r.shape}")
    diff = np.abs(r - g)
    info: dict[str, Any] = {"samples": int(r.shape[0]), "max_abs_diff": float(diff.max()),
                            "mean_abs_diff": float(diff.mean())}
    if ev.metric == "threshold":
        val = float(np.mean((r > ev.threshold) == (g > ev.threshold)))
        info["reference_positive_rate"] = float(np.mean(r > ev.threshold))
    elif ev.metric == "top1":
        val = float(np.mean(r.argmax(axis=1) == g.argmax(axis=1)))
    else:
        num = (r * g).sum(axis=1)
        den = np.linalg.norm(r, axis=1) * np.linalg.norm(g, axis=1)
        cos = np.where(den > 0, num / np.where(den > 0, den, 1), (np.abs(r - g).sum(axis=1) == 0) * 1.0)
        val = float(np.clip(cos.mean(), 0.0, 1.0))
    return val, info
