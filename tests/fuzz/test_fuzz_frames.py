"""A bounded fuzz run (20,000 generated frames by default, ``AGENT_FUZZ_FRAMES`` to change; the
million-frame run is ``python tests/fuzz/run_fuzz.py --frames 1000000``): every frame is answered,
every broken connection is closed by the daemon, and it serves normally afterwards."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import fuzzframes
import pytest
import run_fuzz

pytestmark = pytest.mark.integration

FRAMES = int(os.environ.get("AGENT_FUZZ_FRAMES", "20000"))


def test_every_generated_frame_is_answered_and_the_daemon_serves_afterwards(tmp_path: Path) -> None:
    pytest.importorskip("onnx")
    proc, sock = run_fuzz.start(tmp_path)
    try:
        c = fuzzframes.run(str(sock), FRAMES, seed=int(os.environ.get("AGENT_FUZZ_SEED", "1")),
                           in_features=run_fuzz.IN_FEATURES, max_frame=run_fuzz.MAX_FRAME)
        assert c.frames == FRAMES
        assert (c.unanswered, c.not_closed, c.bad_replies) == (0, 0, 0), c.as_dict()
        assert c.replies >= c.frames
        # every family was generated, and the daemon refused what it had to
        assert len(c.kinds) >= 15, c.kinds
        assert {"ProtocolError", "InvalidParams", "MethodNotFound", "FrameTooLarge"} <= set(c.errors), c.errors
        assert c.results > 0
        assert proc.poll() is None, (tmp_path / "agentd.log").read_text()[-3000:]
        assert run_fuzz.serves(sock)
    finally:
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(60)
    assert rc == 0, (tmp_path / "agentd.log").read_text()[-3000:]
    assert "Traceback" not in (tmp_path / "agentd.log").read_text()
