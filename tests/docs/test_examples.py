"""Every command and snippet in README.md and docs/ runs as written (or says, in the doc, why it cannot here).

Fast: ``run`` examples (no model needed), ``synopsis``, ``sketch`` and ``output`` checks.
Slow: ``slow`` examples against an agentd serving the demo's zoo (SmolLM2 + Silero VAD) on the default
socket, as after ``scripts/demo --keep-serving``; set ``AGENT_TEST_ZOO`` to reuse a built zoo.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from docs_examples import REPO, all_examples, find_examples
from docs_runner import base_env, check_output, check_sketch, check_synopsis, run

EXAMPLES = all_examples()


def _ids(kind: str) -> list[pytest.param]:  # type: ignore[valid-type]
    return [pytest.param(e, id=e.where) for e in EXAMPLES if e.kind == kind]


def test_examples_are_found_in_readme_and_docs():
    files = {e.file for e in EXAMPLES}
    assert "README.md" in files and len(files) >= 6
    assert any(e.kind == "run" for e in EXAMPLES) and any(e.kind == "slow" for e in EXAMPLES)


def test_every_skip_gives_a_reason():
    assert [e.where for e in EXAMPLES if e.kind == "skip" and len(e.reason) < 10] == []


@pytest.mark.parametrize("ex", _ids("run"))
def test_run_example(ex, tmp_path):
    run(ex, base_env(tmp_path))


@pytest.mark.parametrize("ex", _ids("synopsis"))
def test_synopsis_matches_the_commands(ex, tmp_path):
    check_synopsis(ex, base_env(tmp_path))


@pytest.mark.parametrize("ex", _ids("sketch"))
def test_sketch_compiles_and_its_imports_exist(ex):
    check_sketch(ex)


@pytest.mark.parametrize("ex", _ids("output"))
def test_output_and_formats_parse(ex):
    check_output(ex)


def test_a_broken_example_fails(tmp_path):
    """The checks can fail: a doc with a wrong command, a wrong option and a wrong import."""
    doc = REPO / "docs" / ".broken-example-test.md"
    doc.write_text("x\n\n    agentctl no-such-command\n\n<!-- example: synopsis -->\n```\n"
                   "agentctl status [--no-such-option]\n```\n\n<!-- example: sketch -->\n```python\n"
                   "from agent.client import NoSuchClient\n...\n```\n", encoding="utf-8")
    try:
        bad = find_examples(doc)
    finally:
        doc.unlink()
    assert [e.kind for e in bad] == ["run", "synopsis", "sketch"]
    env = base_env(tmp_path)
    with pytest.raises(AssertionError, match="no-such-command"):
        run(bad[0], env)
    with pytest.raises(AssertionError, match="no option --no-such-option"):
        check_synopsis(bad[1], env)
    with pytest.raises(AssertionError, match="has no NoSuchClient"):
        check_sketch(bad[2])


# -- slow: against the demo's zoo and a running agentd -------------------------------------------------

@pytest.fixture(scope="module")
def demo_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    from agent.client import wait_for_socket

    tmp = tmp_path_factory.mktemp("docs-agentd")
    env = base_env(tmp)
    zoo = Path(os.environ["AGENT_TEST_ZOO"]) if os.environ.get("AGENT_TEST_ZOO") else tmp / "zoo"
    if not os.environ.get("AGENT_TEST_ZOO"):
        for recipe, only in (("model_zoo/silero_vad", []), ("model_zoo/smollm2", ["--only", "fp32", "int8", "int4"])):
            subprocess.run([sys.executable, "-m", "agent.cli", "zoo", "build", recipe, "--zoo", str(zoo), *only],
                           cwd=REPO, env=env, check=True, timeout=1800, capture_output=True)
    sock_dir = Path(tempfile.mkdtemp(prefix="agtdoc", dir="/tmp"))
    env["AGENT_SOCKET"] = str(sock_dir / "agent.sock")
    env["AGENT_ZOO"] = str(zoo)
    log = open(tmp / "agentd.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "agent.daemon", "--policy", "policies/balanced.toml",
                             "--http", "127.0.0.1:8077"],   # the port docs/SERVING.md's examples use
                            cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_for_socket(sock_dir / "agent.sock", timeout=300)
        # the examples' input files (x.npy / s.npy for the tensor model) in a working folder
        work = tmp / "work"
        work.mkdir()
        for entry in ("agent", "policies", "model_zoo", "docs", "scripts", "benchmarks", "systemd"):
            (work / entry).symlink_to(REPO / entry)
        import numpy as np

        np.save(work / "x.npy", np.zeros((1, 576), np.float32))
        np.save(work / "s.npy", np.zeros((2, 1, 128), np.float32))
        env["EXAMPLES_WORKDIR"] = str(work)
        yield env
    finally:
        proc.terminate()
        proc.wait(60)
        log.close()
        shutil.rmtree(sock_dir, ignore_errors=True)


@pytest.mark.slow
@pytest.mark.timeout(2400)   # the fixture builds the demo's zoo unless AGENT_TEST_ZOO names one
@pytest.mark.parametrize("ex", _ids("slow"))
def test_slow_example(ex, demo_env):
    run(ex, demo_env, cwd=Path(demo_env["EXAMPLES_WORKDIR"]))
