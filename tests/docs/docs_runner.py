"""Runs one documentation example (see examples.py for the kinds) and raises AssertionError if it fails."""

from __future__ import annotations

import ast
import glob
import importlib
import os
import re
import shlex
import subprocess
import sys
import tomllib
from pathlib import Path

from docs_examples import REPO, Example, command_lines

ENTRY = {"agentctl": [sys.executable, "-m", "agent.cli"], "agentd": [sys.executable, "-m", "agent.daemon"],
         "python": [sys.executable], "python3": [sys.executable]}


def argv_of(line: str, cwd: Path) -> list[str]:
    """A command line split as a POSIX shell would (quotes, comments, globs), without a shell."""
    words = shlex.split(line, comments=True)
    if not words:
        return []
    out = list(ENTRY.get(words[0], [words[0]]))
    for w in words[1:]:
        hits = sorted(glob.glob(w, root_dir=cwd)) if any(c in w for c in "*?[") else []
        out.extend(hits or [w])
    return out


def run_commands(ex: Example, env: dict[str, str], cwd: Path = REPO, timeout: float = 300) -> None:
    for line in command_lines(ex.text):
        argv = argv_of(line, cwd)
        if not argv:
            continue
        p = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout,
                           stdin=subprocess.DEVNULL)
        assert p.returncode == 0, f"{ex.where}: `{line}` exited {p.returncode}:\n{p.stdout[-1500:]}\n{p.stderr[-1500:]}"


def run_python(ex: Example, env: dict[str, str], cwd: Path = REPO, timeout: float = 300) -> None:
    p = subprocess.run([sys.executable, "-c", ex.text], cwd=cwd, env=env, capture_output=True, text=True,
                       timeout=timeout, stdin=subprocess.DEVNULL)
    assert p.returncode == 0, f"{ex.where}: the python example failed:\n{p.stdout[-1500:]}\n{p.stderr[-2500:]}"


def run(ex: Example, env: dict[str, str], cwd: Path = REPO) -> None:
    if ex.lang == "python":
        run_python(ex, env, cwd)
    else:
        run_commands(ex, env, cwd)


def check_synopsis(ex: Example, env: dict[str, str]) -> None:
    """Each usage line names a command that exists, and each --option it shows is in that command's help."""
    for line in command_lines(ex.text):
        line = re.sub(r"\s+#.*$", "", line)          # a trailing comment is prose, not an option
        words = line.replace("[", " ").replace("]", " ").replace("|", " ").split()
        if not words or words[0] not in ("agentctl", "agentd"):
            continue
        cmd = [words[0]]
        for w in words[1:]:
            if w.startswith("-") or not re.fullmatch(r"[a-z][a-z-]*", w):
                break
            cmd.append(w)
        argv = ENTRY[cmd[0]] + cmd[1:] + ["--help"]
        p = subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
        assert p.returncode == 0, f"{ex.where}: `{' '.join(cmd)} --help` exited {p.returncode}: {p.stderr[-800:]}"
        for opt in re.findall(r"(?<![\w-])(--[a-z][a-z0-9-]*)", line):
            assert opt in p.stdout, f"{ex.where}: `{' '.join(cmd)}` has no option {opt} (its --help does not list it)"


def check_sketch(ex: Example) -> None:
    tree = ast.parse(ex.text, filename=ex.where)
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "agent":
            mod = importlib.import_module(node.module)
            for alias in node.names:
                assert hasattr(mod, alias.name), f"{ex.where}: {node.module} has no {alias.name}"
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "agent":
                    importlib.import_module(alias.name)


def check_output(ex: Example) -> None:
    if ex.lang == "toml":
        try:
            tomllib.loads(ex.text)
        except tomllib.TOMLDecodeError as e:
            raise AssertionError(f"{ex.where}: the toml example does not parse: {e}") from None


def base_env(tmp: Path) -> dict[str, str]:
    env = dict(os.environ)
    for k in ("NOTIFY_SOCKET", "LISTEN_FDS", "LISTEN_PID"):
        env.pop(k, None)
    env["AGENT_STATE_DIR"] = str(tmp / "state")
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return env
