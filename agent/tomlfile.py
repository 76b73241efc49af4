"""Strict TOML reading with line numbers for error messages.

``tomllib`` gives no positions, so :func:`locate` finds the line of a key path by scanning the text:
it follows ``[table]`` / ``[[array]]`` headers and ``key = value`` lines (dotted keys included). It is
used only to *name* the line in an error, so a best effort (falling back to the table's header line,
then line 1) is enough. The same reader serves manifests, recipes and policy files.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from agent.errors import ConfigError

_HEADER = re.compile(r"^\s*(\[\[?)\s*([^\]]+?)\s*\]\]?\s*(#.*)?$")
_KEYLINE = re.compile(r"^\s*([A-Za-z0-9_\-\.\"' ]+?)\s*=")

PathKey = Sequence[str | int]
_Str = str     # Checker has methods named str/bool: annotations inside it use these aliases
_Bool = bool


def _split_dotted(s: str) -> list[str]:
    return [p.strip().strip("\"'") for p in s.split(".")]


def locate(text: str, path: PathKey) -> int | None:
    """Best-effort 1-based line number of ``path`` (e.g. ``("variants", 2, "file")``) in ``text``."""
    want = list(path)
    arrays: dict[tuple[str, ...], int] = {}
    cur: list[str | int] = []
    best: int | None = None
    best_len = -1
    for lineno, raw in enumerate(text.splitlines(), start=1):
        m = _HEADER.match(raw)
        if m and not raw.lstrip().startswith("#"):
            names = _split_dotted(m.group(2))
            if m.group(1) == "[[":
                key = tuple(names)
                arrays[key] = arrays.get(key, -1) + 1
                cur = [*names, arrays[key]]
            else:
                # a sub-table of the last array element, e.g. [variants.figures] after [[variants]]
                cur = list(names)
                for key, idx in arrays.items():
                    if tuple(names[: len(key)]) == key:
                        cur = [*key, idx, *names[len(key):]]
            n = _prefix_len(cur, want)
            if n == len(cur) and n > best_len:
                best, best_len = lineno, n
            continue
        km = _KEYLINE.match(raw)
        if km and not raw.lstrip().startswith("#"):
            full = [*cur, *_split_dotted(km.group(1))]
            n = _prefix_len(full, want)
            if n == len(full) and n > best_len:
                best, best_len = lineno, n
    return best


def _prefix_len(have: list[str | int], want: list[str | int]) -> int:
    n = 0
    for a, b in zip(have, want, strict=False):
        if a != b:
            break
        n += 1
    return n


class TomlDoc:
    """A parsed TOML file that can raise located errors about its own keys."""

    def __init__(self, path: Path, data: dict[str, Any], text: str, error_cls: type[ConfigError]):
        self.path, self.data, self.text, self.error_cls = path, data, text, error_cls

    @classmethod
    def load(cls, path: Path, error_cls: type[ConfigError] = ConfigError) -> TomlDoc:
        try:
            raw = path.read_bytes()
        except OSError as e:
            raise error_cls(f"cannot read: {e.strerror or e}", file=str(path)) from e
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise error_cls(f"expected UTF-8 text, got invalid byte at offset {e.start}", file=str(path)) from e
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as e:
            line = getattr(e, "lineno", None)
            msg = getattr(e, "msg", str(e))
            m = re.search(r"\(at line (\d+), column \d+\)", str(e))
            if line is None and m:  # Python 3.11's TOMLDecodeError keeps the position only in the text
                line = int(m.group(1))
                msg = str(e)[: m.start()].strip()
            raise error_cls(f"invalid TOML: {msg}", file=str(path), line=line) from e
        return cls(path, data, text, error_cls)

    def error(self, path: PathKey, message: str) -> ConfigError:
        key = ".".join(str(p) for p in path)
        return self.error_cls(message, file=str(self.path), line=locate(self.text, path) or 1, key=key)


def type_name(v: Any) -> str:
    if isinstance(v, bool):
        return "boolean"
    if isinstance(v, int):
        return "integer"
    if isinstance(v, float):
        return "float"
    if isinstance(v, str):
        return f"string {v!r}" if len(v) < 40 else "string"
    if isinstance(v, list):
        return "array"
    if isinstance(v, dict):
        return "table"
    return type(v).__name__


class Checker:
    """Typed accessors over a table of a :class:`TomlDoc` that reject unknown keys."""

    def __init__(self, doc: TomlDoc, table: dict[_Str, Any], path: PathKey = ()):
        self.doc, self.table, self.path = doc, table, list(path)

    def at(self, key: _Str | int) -> list[_Str | int]:
        return [*self.path, key]

    def only(self, allowed: set[_Str]) -> None:
        for k in self.table:
            if k not in allowed:
                raise self.doc.error(self.at(k), f"unknown key; expected one of {', '.join(sorted(allowed))}")

    def _get(self, key: _Str, required: _Bool) -> Any:
        if key not in self.table:
            if required:
                raise self.doc.error(self.path or [key], f"{key}: missing required key")
            return None
        return self.table[key]

    def str(self, key: _Str, required: _Bool = True, choices: Sequence[_Str] | None = None) -> Any:
        v = self._get(key, required)
        if v is None:
            return None
        if not isinstance(v, _Str):
            raise self.doc.error(self.at(key), f"expected a string, got {type_name(v)}")
        if choices is not None and v not in choices:
            raise self.doc.error(self.at(key), f"expected one of {', '.join(choices)}, got {v!r}")
        return v

    def num(self, key: _Str, required: _Bool = True, lo: float | None = None, hi: float | None = None,
            integer: _Bool = False) -> Any:
        v = self._get(key, required)
        if v is None:
            return None
        ok = isinstance(v, int) if integer else isinstance(v, (int, float))
        if isinstance(v, bool) or not ok:
            raise self.doc.error(self.at(key),
                                 f"expected {'an integer' if integer else 'a number'}, got {type_name(v)}")
        if (lo is not None and v < lo) or (hi is not None and v > hi):
            rng = f"{lo if lo is not None else '-inf'}..{hi if hi is not None else 'inf'}"
            raise self.doc.error(self.at(key), f"expected a number in {rng}, got {v}")
        return v

    def bool(self, key: _Str, required: _Bool = True) -> Any:
        v = self._get(key, required)
        if v is None:
            return None
        if not isinstance(v, bool):
            raise self.doc.error(self.at(key), f"expected true or false, got {type_name(v)}")
        return v

    def table_of(self, key: _Str, required: _Bool = False) -> Checker | None:
        v = self._get(key, required)
        if v is None:
            return None
        if not isinstance(v, dict):
            raise self.doc.error(self.at(key), f"expected a table, got {type_name(v)}")
        return Checker(self.doc, v, self.at(key))

    def array_of_tables(self, key: _Str, required: _Bool = False) -> list[Checker]:
        v = self._get(key, required)
        if v is None:
            return []
        if not isinstance(v, list) or not all(isinstance(x, dict) for x in v):
            raise self.doc.error(self.at(key), f"expected an array of tables ([[{key}]]), got {type_name(v)}")
        return [Checker(self.doc, x, [*self.at(key), i]) for i, x in enumerate(v)]

    def list_of_str(self, key: _Str, required: _Bool = False) -> list[_Str] | None:
        v = self._get(key, required)
        if v is None:
            return None
        if not isinstance(v, list) or not all(isinstance(x, _Str) for x in v):
            raise self.doc.error(self.at(key), f"expected an array of strings, got {type_name(v)}")
        return list(v)

    def error(self, key: _Str | int | None, message: _Str) -> ConfigError:
        return self.doc.error(self.at(key) if key is not None else self.path, message)
