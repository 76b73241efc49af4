"""agentctl zoo build / show through the CLI module's main(argv)."""

from __future__ import annotations

import argparse
import io
import json
from pathlib import Path

import pytest
from zoo_helpers import write_recipe

from agent.zoo.cli import add_parsers, default_zoo_dir, main

SMALL = '[[variants]]\nid = "fp32"\nmethod = "copy"\n[[variants]]\nid = "int8"\nmethod = "int8-dynamic"\n'


def test_build_then_show_json_reports_measured_variants(tmp_path: Path, mlp_file: Path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    p = write_recipe(tmp_path / "r", mlp_file, variants=SMALL)
    zoo = tmp_path / "zoo"
    assert main(["zoo", "build", str(p), "--zoo", str(zoo)]) == 0
    out, err = capsys.readouterr()
    assert "int8" in out and "[3/3] int8 (int8-dynamic)" in err   # plain progress lines when not a TTY
    assert main(["zoo", "show", "mlp", "--zoo", str(zoo), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert [v["id"] for v in data["variants"]] == ["fp32", "int8"]
    assert data["variants"][1]["measurements"][0]["latency_ms_p50"] > 0
    assert data["variants"][1]["build"]["command"].startswith("agentctl zoo build")


def test_build_of_a_bad_recipe_is_one_line_and_status_2(tmp_path: Path, mlp_file: Path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    p = write_recipe(tmp_path / "r", mlp_file, variants=SMALL, extra="bogus = 1\n")
    assert main(["zoo", "build", str(p), "--zoo", str(tmp_path / "zoo")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "recipe.toml:" in err and "bogus: unknown key" in err
    assert not (tmp_path / "zoo").exists()


def test_build_failure_is_one_line_and_status_1(tmp_path: Path, mlp_file: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    p = write_recipe(tmp_path / "r", mlp_file, variants=SMALL, sha="1" * 64)
    assert main(["zoo", "build", str(p), "--zoo", str(tmp_path / "zoo")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("agentctl: BuildError: ") and "sha256" in err[-1]


def test_only_with_an_unknown_variant_is_refused(tmp_path: Path, mlp_file: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    p = write_recipe(tmp_path / "r", mlp_file, variants=SMALL)
    assert main(["zoo", "build", str(p), "--zoo", str(tmp_path / "zoo"), "--only", "int3"]) == 2
    assert "no variant 'int3'" in capsys.readouterr().err


def test_show_unknown_model_names_what_exists(tmp_path: Path, mlp_file: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["zoo", "show", "nothing", "--zoo", str(tmp_path)]) == 1
    assert "NotFound: no model 'nothing'" in capsys.readouterr().err


def test_add_parsers_registers_zoo_commands() -> None:
    p = argparse.ArgumentParser()
    add_parsers(p.add_subparsers(dest="cmd"))
    a = p.parse_args(["zoo", "build", "model_zoo/silero_vad", "--only", "int8", "fp16"])
    assert a.only == ["int8", "fp16"] and callable(a.func)


def test_default_zoo_dir_follows_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("AGENT_ZOO", raising=False)
    monkeypatch.setenv("AGENT_STATE_DIR", str(tmp_path))
    assert default_zoo_dir() == tmp_path / "zoo"
    monkeypatch.setenv("AGENT_ZOO", str(tmp_path / "z2"))
    assert default_zoo_dir() == tmp_path / "z2"


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_tty_gets_a_tqdm_bar_and_a_pipe_gets_lines(tmp_path: Path, mlp_file: Path) -> None:
    pytest.importorskip("tqdm")
    from agent.zoo.build.runner import build_recipe
    from agent.zoo.cli import LineReporter, TqdmReporter, make_reporter
    from agent.zoo.recipe import load_recipe

    assert isinstance(make_reporter(io.StringIO()), LineReporter)
    out = _Tty()
    rep = make_reporter(out)
    assert isinstance(rep, TqdmReporter)
    build_recipe(load_recipe(write_recipe(tmp_path / "r", mlp_file, variants=SMALL)), tmp_path / "zoo",
                 reporter=rep)
    text = out.getvalue()
    assert "✓ fp32 (copy)" in text and "✓ int8 (int8-dynamic)" in text and "3/3" in text


def test_show_of_a_broken_manifest_names_file_and_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "manifest.toml").write_text('schema = 1\nname = "m"\nkind = "banana"\n')
    assert main(["zoo", "show", "m", "--zoo", str(tmp_path)]) == 2
    assert "manifest.toml:3: kind: expected one of tensor, causal-lm" in capsys.readouterr().err
