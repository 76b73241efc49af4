"""The examples in README.md and docs/*.md, found and classified so a test can run each one.

A block is a fenced block (```lang) or a 4-space indented block after a blank line. An HTML comment on
the line just before it says what it is (``<!-- example: KIND -->``); without one, the kind follows
from the block:

- ``run``      executed as written: python blocks in a subprocess; command lines (``agentctl``,
               ``agentd``, ``scripts/...``, ``python -m``) one after another, split like a shell would
               (quotes, ``\\`` continuations, ``#`` comments, globs), never through a shell;
- ``slow``     like ``run``, but only in the slow suite (needs the SmolLM2 zoo and a running agentd);
- ``synopsis`` usage lines with placeholders: each command must exist and each ``--option`` it names
               must appear in that command's ``--help``;
- ``sketch``   a python outline with ``...``: it must compile and every ``from agent... import`` in it
               must resolve;
- ``output``   what a program prints, or a data format; toml blocks must parse;
- ``skip: why`` not runnable here (a GPU, a systemd install), with the reason.

Defaults: python → run, toml → output (parsed), a block whose lines are commands → run, anything
else → output.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
COMMANDS = ("agentctl", "agentd", "scripts/", "python -m", "python3 -m", "pip ", "curl ", "sudo ", "systemctl ",
            "git ", "$ ")
_ANNOT = re.compile(r"^<!--\s*example:\s*([a-z]+)(?::\s*(.*?))?\s*-->\s*$")
KINDS = ("run", "slow", "synopsis", "sketch", "output", "skip")


@dataclass(frozen=True)
class Example:
    file: str
    line: int            # 1-based line of the block's first content line
    lang: str            # "python", "toml", "sh", "" ...
    kind: str
    text: str
    reason: str = ""

    @property
    def where(self) -> str:
        return f"{self.file}:{self.line}"


def is_command(line: str) -> bool:
    s = line.strip()
    return s.startswith(COMMANDS)


def _kind(lang: str, text: str, annot: tuple[str, str] | None) -> tuple[str, str]:
    if annot is not None:
        return annot
    if lang == "python":
        return "run", ""
    lines = [x for x in text.splitlines() if x.strip() and not x.strip().startswith("#")]
    if lang in ("sh", "bash", "console", "shell") or (lines and all(
            is_command(x) or x.startswith((" ", "\t")) for x in lines) and is_command(lines[0])):
        return "run", ""
    return "output", ""


def find_examples(path: Path) -> list[Example]:
    rel = str(path.relative_to(REPO))
    lines = path.read_text(encoding="utf-8").splitlines()
    out: list[Example] = []
    i = 0
    annot: tuple[str, str] | None = None
    prev_blank = True
    in_list = False
    while i < len(lines):
        line = lines[i]
        m = _ANNOT.match(line.strip())
        if m:
            if m.group(1) not in KINDS:
                raise ValueError(f"{rel}:{i + 1}: unknown example kind {m.group(1)!r}; expected one of {KINDS}")
            annot = (m.group(1), m.group(2) or "")
            i += 1
            continue
        if line.startswith("```"):
            lang = line[3:].strip().split()[0] if line[3:].strip() else ""
            j = i + 1
            while j < len(lines) and not lines[j].startswith("```"):
                j += 1
            text = "\n".join(lines[i + 1:j])
            kind, reason = _kind(lang, text, annot)
            out.append(Example(rel, i + 2, lang, kind, text, reason))
            annot, prev_blank, i = None, False, j + 1
            continue
        if line.startswith("    ") and prev_blank and not in_list:
            j = i
            while j < len(lines) and (lines[j].startswith("    ") or not lines[j].strip()):
                j += 1
            block = [x[4:] for x in lines[i:j]]
            while block and not block[-1].strip():
                block.pop()
            text = "\n".join(block)
            kind, reason = _kind("", text, annot)
            out.append(Example(rel, i + 1, "", kind, text, reason))
            annot, prev_blank, i = None, False, j
            continue
        if line.strip():
            annot = None if not _ANNOT.match(line.strip()) else annot
            in_list = bool(re.match(r"^\s*([-*+]|\d+\.)\s", line)) or (in_list and line.startswith(" "))
        prev_blank = not line.strip()
        i += 1
    return out


def all_examples() -> list[Example]:
    files = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
    return [e for f in files for e in find_examples(f)]


def command_lines(text: str) -> list[str]:
    """The commands of a block: ``\\``-continued lines joined; blank lines and comment lines dropped."""
    cmds: list[str] = []
    cur = ""
    for raw in text.splitlines():
        line = raw.rstrip()
        if not cur and (not line.strip() or line.strip().startswith("#")):
            continue
        if line.endswith("\\"):
            cur += line[:-1] + " "
            continue
        cmds.append((cur + line).strip())
        cur = ""
    if cur.strip():
        cmds.append(cur.strip())
    return cmds
