"""Public-domain text for LLM evaluation, layer selection and distillation.

Named sources (no network):

- ``pydoc-topics``  CPython's own ``pydoc_data/topics.py`` (stdlib; held-out evaluation text)
- ``kjv-ot``        King James Bible, Old Testament (Debian ``bible-kjv-text``; calibration/distillation)
- ``kjv-nt``        King James Bible, New Testament (held-out evaluation)
- anything else     a text file path (relative paths resolve against ``base``)
"""

from __future__ import annotations

import hashlib
import importlib.util
import shutil
import subprocess
from pathlib import Path

from agent.errors import BuildError

NAMED = ("pydoc-topics", "kjv-ot", "kjv-nt")
_KJV_RANGES = {"kjv-ot": "Gen1:1-Mal4:6", "kjv-nt": "Matt1:1-Rev22:21"}


def load_text(name: str, base: Path | None = None) -> str:
    if name == "pydoc-topics":
        spec = importlib.util.find_spec("pydoc_data.topics")
        if spec is None or spec.origin is None:
            raise BuildError("pydoc-topics: this Python has no pydoc_data/topics.py")
        return Path(spec.origin).read_text(encoding="utf-8")
    if name in _KJV_RANGES:
        exe = shutil.which("bible")
        if exe is None:
            raise BuildError(f"{name}: needs the Debian package bible-kjv-text (apt-get install bible-kjv-text)")
        r = subprocess.run([exe, _KJV_RANGES[name]], capture_output=True, text=True, stdin=subprocess.DEVNULL,
                           check=False, timeout=60, env={"PATH": "/usr/bin:/bin", "COLUMNS": "100"})
        if r.returncode != 0 or len(r.stdout) < 10000:
            raise BuildError(f"{name}: the bible command failed: {r.stderr.strip()[:200]}")
        return r.stdout
    p = Path(name)
    if not p.is_absolute() and base is not None:
        p = base / p
    try:
        return p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise BuildError(f"eval text {name!r}: cannot read {p}: {e}") from None


def fingerprint(*texts: str) -> str:
    h = hashlib.sha256()
    for t in texts:
        h.update(hashlib.sha256(t.encode("utf-8")).digest())
    return h.hexdigest()
