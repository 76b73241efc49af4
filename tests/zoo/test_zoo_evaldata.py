"""Evaluation data: WAV reading/resampling, windows with context, state carried between windows."""

from __future__ import annotations

import wave
from pathlib import Path

import numpy as np
import pytest

from agent.errors import BuildError
from agent.zoo.build import evaldata


def _sine_wav(path: Path, rate: int, freq: float, seconds: float, channels: int = 1) -> Path:
    t = np.arange(int(rate * seconds)) / rate
    x = (0.5 * np.sin(2 * np.pi * freq * t) * 32767).astype("<i2")
    with wave.open(str(path), "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(np.repeat(x, channels).tobytes())
    return path


def _peak_hz(x: np.ndarray, rate: int) -> float:
    spec = np.abs(np.fft.rfft(x))
    return float(np.fft.rfftfreq(len(x), 1 / rate)[spec.argmax()])


def test_48k_stereo_wav_is_resampled_to_16k_mono_keeping_pitch(tmp_path: Path) -> None:
    p = _sine_wav(tmp_path / "a.wav", 48000, 440.0, 1.0, channels=2)
    x = evaldata.read_wav(p, 16000)
    assert x.dtype == np.float32 and abs(len(x) - 16000) <= 1
    assert abs(_peak_hz(x, 16000) - 440.0) < 2.0
    assert 0.45 < np.abs(x[100:-100]).max() < 0.55


def test_tone_above_the_new_nyquist_is_filtered_out(tmp_path: Path) -> None:
    p = _sine_wav(tmp_path / "hi.wav", 48000, 12000.0, 0.5)
    x = evaldata.read_wav(p, 16000)
    assert np.abs(x[200:-200]).max() < 0.05   # would alias to 4 kHz without the low-pass


def test_not_a_wav_is_a_build_error(tmp_path: Path) -> None:
    p = tmp_path / "x.wav"
    p.write_bytes(b"RIFF\x00\x00garbage")
    with pytest.raises(BuildError, match="cannot read WAV"):
        evaldata.read_wav(p, 16000)


def test_windows_carry_context_and_split_calibration_from_held_out(tmp_path: Path) -> None:
    for i in range(3):
        _sine_wav(tmp_path / f"{i}.wav", 16000, 300.0 + i, 0.2)
    ev = evaldata.TensorEval(data="wav", files=("*.wav",), calibration=1, input="input", window=512,
                             context=64, base=tmp_path, state={"stateN": "state"})
    calib, held = evaldata.streams(ev, [("input", "float32", [1, 576]), ("state", "float32", [2, 1, 128])])
    assert len(calib) == 1 and len(held) == 2 and len(held[0]) == 3200 // 512
    w0, w1 = held[0][0]["input"][0], held[0][1]["input"][0]
    assert w0.shape == (576,) and not w0[:64].any()
    assert np.array_equal(w1[:64], w0[-64:])
    feed = evaldata.complete_feed(ev, held[0][0], [("input", "float32", [1, 576]),
                                                   ("state", "float32", [2, "batch", 128])], {})
    assert feed["state"].shape == (2, 1, 128) and not feed["state"].any()


def test_too_few_files_for_a_held_out_part_is_an_error(tmp_path: Path) -> None:
    _sine_wav(tmp_path / "only.wav", 16000, 300.0, 0.1)
    ev = evaldata.TensorEval(data="wav", files=("*.wav",), calibration=1, input="input", base=tmp_path)
    with pytest.raises(BuildError, match="matched 1 file"):
        evaldata.streams(ev, [("input", "float32", [1, 512])])


def test_threshold_agreement_counts_flipped_decisions() -> None:
    ev = evaldata.TensorEval(data="random", metric="threshold", threshold=0.5)
    ref = [np.array([[0.9]]), np.array([[0.1]]), np.array([[0.6]]), np.array([[0.2]])]
    got = [np.array([[0.8]]), np.array([[0.7]]), np.array([[0.55]]), np.array([[0.2]])]
    val, info = evaldata.quality(ev, ref, got)
    assert val == 0.75 and info["max_abs_diff"] == pytest.approx(0.6)
