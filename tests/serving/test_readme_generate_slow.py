"""The README's two ``agentctl generate`` examples, run as written against agentd with the default policy
on the real SmolLM2 ladder: both answers contain "Paris" (issue 10, item 5).

    AGENT_TEST_ZOO=/path/to/writable/zoo .venv/bin/python -m pytest tests/serving/test_readme_generate_slow.py -m slow

The ladder (fp32, fp16, int8, int4; ``AGENT_README_LADDER=fp32,int8,int4`` picks others, the first is
the reference) is built or brought up to date in ``AGENT_TEST_ZOO`` (a temporary
zoo when unset: then it builds and measures all four, ~15 min on two busy cores); the daemon serves
hard links of it in a private zoo, with no ``--policy`` (the built-in profiles: balanced, min energy at
>= 0.99 relative quality) and the live sensors.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LADDER = [v for v in os.environ.get("AGENT_README_LADDER", "fp32,fp16,int8,int4").split(",") if v]


def readme_generate_examples() -> list[list[str]]:
    """agentctl's arguments of every ``agentctl generate`` line in README.md (comments dropped)."""
    out = []
    for line in (ROOT / "README.md").read_text(encoding="utf-8").splitlines():
        s = line.strip()
        if s.startswith("agentctl generate "):
            out.append(shlex.split(s, comments=True)[1:])
    return out


def test_the_readme_has_two_generate_examples_that_agentctl_accepts():
    import argparse

    from agent.llm.cli import add_parsers

    examples = readme_generate_examples()
    assert len(examples) == 2, examples
    p = argparse.ArgumentParser()
    add_parsers(p.add_subparsers(dest="cmd"))
    parsed = [p.parse_args(args) for args in examples]
    assert {a.raw for a in parsed} == {False, True}     # one chat (the default), one plain completion
    assert all(a.model == "smollm2" for a in parsed)


@pytest.fixture(scope="module")
def default_daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    from agent.zoo.build.runner import build_recipe
    from agent.zoo.recipe import load_recipe

    sys.path.insert(0, str(ROOT / "benchmarks"))
    from bench_llm_serving import private_zoo

    from tests.conftest import start_daemon

    tmp = tmp_path_factory.mktemp("readme")
    zoo = Path(os.environ.get("AGENT_TEST_ZOO") or tmp / "built")
    build_recipe(load_recipe(ROOT / "model_zoo" / "smollm2"), zoo, only=LADDER)
    private_zoo(zoo, "smollm2", LADDER, tmp / "zoo")
    saved = {k: os.environ.pop(k) for k in ("AGENT_POLICY", "CONFIGURATION_DIRECTORY") if k in os.environ}
    try:
        d = start_daemon(tmp / "zoo", tmp, "--spare-workers", "0")
    finally:
        os.environ.update(saved)
    yield d
    d.stop()


@pytest.mark.slow
@pytest.mark.integration
def test_the_readme_generate_examples_answer_paris_on_the_default_policys_choice(default_daemon):
    d = default_daemon
    env = {k: v for k, v in os.environ.items() if k not in ("AGENT_POLICY",)}
    env["PYTHONIOENCODING"] = "utf-8"

    def agentctl(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "agent.cli", "--socket", str(d.socket), *args],  # type: ignore[attr-defined]
                              capture_output=True, text=True, timeout=600, check=False, env=env)

    st = json.loads(agentctl("status", "--json").stdout)["models"]["smollm2"]
    active = st["active"]["variant"]
    assert "unfit" not in st["variants"][active], st["variants"][active]   # the policy never serves an unfit one
    for args in readme_generate_examples():
        r = agentctl(*args)
        assert r.returncode == 0, r.stderr
        assert "Paris" in r.stdout, (args, active, r.stdout, r.stderr)
        assert f"{active}@cpu" in r.stderr
