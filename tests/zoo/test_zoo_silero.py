"""Silero VAD from its pinned PyPI wheel, measured on the recorded voices of Debian's alsa-utils.

The wheel is downloaded once (pip download --no-deps) into pytest's cache dir; the test skips when pip
cannot fetch it or when /usr/share/sounds/alsa has no WAVs (apt-get install alsa-utils).
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from agent.errors import BuildError
from agent.zoo.build.runner import build_recipe
from agent.zoo.manifest import MANIFEST, load_manifest
from agent.zoo.recipe import load_recipe

RECIPE = Path(__file__).resolve().parents[2] / "model_zoo" / "silero_vad" / "recipe.toml"
ALSA = Path("/usr/share/sounds/alsa")

pytestmark = pytest.mark.skipif(len(list(ALSA.glob("*.wav"))) < 4,
                                reason="needs the voice WAVs of Debian's alsa-utils in /usr/share/sounds/alsa")


@pytest.fixture(scope="module")
def silero_zoo(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh zoo whose source cache holds the wheel (fetched once per machine into pytest's cache)."""
    recipe = load_recipe(RECIPE)
    wsha = recipe.source.wheel_sha256
    pcache = getattr(request.config, "cache", None)
    cache = Path(pcache.mkdir("zoo-silero-wheel")) if pcache is not None else \
        tmp_path_factory.mktemp("wheel")
    wheels = list(cache.glob("*.whl"))
    if not wheels:
        r = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-q",
                            "-d", str(cache), recipe.source.pypi],
                           check=False, capture_output=True, text=True, timeout=300)
        wheels = list(cache.glob("*.whl"))
        if r.returncode != 0 or not wheels:
            pytest.skip(f"pip cannot fetch {recipe.source.pypi}: {(r.stderr or '').strip()[-200:]}")
    zoo = tmp_path_factory.mktemp("silero") / "zoo"
    dest = zoo / ".cache" / "wheels" / str(wsha)
    dest.mkdir(parents=True)
    shutil.copy(wheels[0], dest / wheels[0].name)
    return zoo


def test_silero_ladder_is_built_and_measured_on_recorded_speech(silero_zoo: Path) -> None:
    recipe = load_recipe(RECIPE)
    m, reports = build_recipe(recipe, silero_zoo)
    assert [r.action for r in reports] == ["built"] * 4
    m = load_manifest(silero_zoo / "silero_vad")
    assert [s.name for s in m.inputs] == ["input", "state"] and m.inputs[0].shape == (1, 576)
    size = {v.id: v.size_bytes for v in m.variants}
    q = {v.id: v.quality for v in m.variants}
    ev = {v.id: v.build.get("eval", {}) for v in m.variants}
    assert size["fp16"] < 0.6 * size["fp32"] and size["int8"] < size["fp32"]
    assert q["fp32"].metric == "agreement" and q["fp32"].relative == 1.0
    assert ev["fp16"]["max_abs_diff"] < 0.02 and q["fp16"].relative >= 0.99
    assert q["int8"].relative >= 0.95 and q["int8-qdq"].relative >= 0.9
    # the voices are real speech: the reference calls a good share of the windows speech, not all
    assert 0.2 < ev["fp16"]["reference_positive_rate"] < 0.95
    assert ev["fp16"]["samples"] > 200
    info = m.variant("int8").build["info"]
    assert len(info["kept_float"]) == 3 and len(info["sensitivity"]) >= 6
    for v in m.variants:
        assert v.measurements[0].latency_ms_p50 > 0 and v.build["source"].startswith("silero-vad==6.2.3:")


def test_wrong_wheel_sha256_fails_cleanly(silero_zoo: Path, tmp_path: Path) -> None:
    text = re.sub(r'wheel_sha256 = "[0-9a-f]+"', 'wheel_sha256 = "' + "ab" * 32 + '"', RECIPE.read_text())
    p = tmp_path / "recipe.toml"
    p.write_text(text)
    zoo = tmp_path / "zoo"
    with pytest.raises(BuildError) as e:
        build_recipe(load_recipe(p), zoo)
    msg = str(e.value)
    if "pip download" in msg:
        pytest.skip(f"pip cannot fetch the wheel here: {msg}")
    assert msg.startswith(f"{p}: source: wheel silero_vad-6.2.3-py3-none-any.whl has sha256 ")
    assert msg.endswith("expected " + "ab" * 32) and "\n" not in msg
    assert not (zoo / "silero_vad").exists()
    kept = [x for x in (zoo / ".cache").rglob("*") if x.is_file() and "locks" not in x.parts]
    assert not kept   # nothing unverified is kept


def test_missing_member_in_the_wheel_is_named(silero_zoo: Path, tmp_path: Path) -> None:
    p = tmp_path / "recipe.toml"
    p.write_text(RECIPE.read_text().replace("silero_vad_openvino_16k.onnx", "silero_vad_99k.onnx"))
    zoo = silero_zoo   # reuses the verified wheel in the cache
    with pytest.raises(BuildError, match=r"source: wheel silero_vad-6\.2\.3-py3-none-any\.whl has no member "
                                         r"'silero_vad/data/silero_vad_99k\.onnx'"):
        build_recipe(load_recipe(p), zoo)
    assert (zoo / "silero_vad" / MANIFEST).exists()   # the built model beside it is untouched
