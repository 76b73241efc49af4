"""Build and measurement errors keep their cause: one line with the head and the end, the whole in a log."""

from __future__ import annotations

from pathlib import Path

from agent.errors import BuildError
from agent.zoo.buildlog import keep_cause, one_line

ORT = ("[ONNXRuntimeError] : 10 : INVALID_GRAPH : Load model from /zoo/m/.tmp-q-x/model.onnx failed:This is an "
       "invalid model. In Node, " + "(\"w\": tensor(int32)) " * 60 + ", Error Unrecognized attribute: axis for "
       "operator DequantizeLinear")


def test_a_long_message_keeps_its_head_and_its_end() -> None:
    line = one_line(ORT)
    assert len(line) <= 600 and line.startswith("[ONNXRuntimeError] : 10 : INVALID_GRAPH")
    assert line.endswith("Unrecognized attribute: axis for operator DequantizeLinear") and " … " in line
    assert one_line("short\n  and   two lines") == "short and two lines"


def test_a_short_error_of_ours_is_left_as_it_is(tmp_path: Path) -> None:
    assert keep_cause(tmp_path, "v", BuildError("no calibration data")) == "no calibration data"
    assert not (tmp_path / ".build-logs").exists()


def test_a_shortened_error_or_subprocess_detail_goes_to_the_log(tmp_path: Path) -> None:
    log = tmp_path / ".build-logs" / "v.log"
    line = keep_cause(tmp_path, "v", BuildError("onnxruntime cannot load the variant: " + ORT))
    assert line.endswith(f"DequantizeLinear (full cause: {log})") and ORT in " ".join(log.read_text().split())
    line = keep_cause(tmp_path, "w", BuildError("KeyError: 'x'", data={"detail": "Traceback ...\nKeyError: 'x'"}))
    assert line.endswith("(full cause: " + str(tmp_path / ".build-logs" / "w.log") + ")")
    assert "detail from the subprocess" in (tmp_path / ".build-logs" / "w.log").read_text()
    line = keep_cause(tmp_path, "t", ValueError("tool broke"))
    assert line.startswith("ValueError: tool broke (full cause: ")
