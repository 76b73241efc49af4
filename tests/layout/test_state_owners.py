"""Each piece of state has one owner: outside ``agent/runtime/`` no module writes the runtime's slots,
its per-model fronts or a pinned mark (reads are fine). The runtime's public methods (``put_model``,
``swap``, ``fall_back``) are the way in; pins and holds live in the policy state."""

from __future__ import annotations

import ast
from pathlib import Path

AGENT = Path(__file__).resolve().parents[2] / "agent"
OWNED = {"slots", "fronts"}         # runtime containers: no assignment to them or through them
MARKS = {"pinned"}                  # attributes nobody outside the runtime sets
MUTATORS = {"pop", "popitem", "clear", "update", "setdefault", "__setitem__", "__delitem__"}


def _chain(node: ast.expr) -> list[ast.expr]:
    """``a.b[c].d`` -> [a.b[c].d, a.b[c], a.b, a] (the value chain of a target, indexes left out)."""
    out = [node]
    while isinstance(node, (ast.Attribute, ast.Subscript, ast.Starred)):
        node = node.value
        out.append(node)
    return out


def _targets(node: ast.AST) -> list[ast.expr]:
    if isinstance(node, ast.Assign):
        ts: list[ast.expr] = list(node.targets)
    elif isinstance(node, (ast.AugAssign, ast.AnnAssign)):
        ts = [node.target]
    elif isinstance(node, ast.Delete):
        ts = list(node.targets)
    elif isinstance(node, (ast.For, ast.AsyncFor)):
        ts = [node.target]
    elif isinstance(node, ast.withitem) and node.optional_vars is not None:
        ts = [node.optional_vars]
    else:
        return []
    flat: list[ast.expr] = []
    while ts:
        t = ts.pop()
        if isinstance(t, (ast.Tuple, ast.List)):
            ts.extend(t.elts)
        else:
            flat.append(t)
    return flat


def _owned(t: ast.expr) -> bool:
    if isinstance(t, ast.Attribute) and t.attr in MARKS:
        return True
    return any(isinstance(n, ast.Attribute) and n.attr in OWNED for n in _chain(t))


def state_writes(source: str, filename: str = "<src>") -> list[str]:
    """``file:line: text`` of each write to runtime-owned state in ``source``."""
    found = []
    for node in ast.walk(ast.parse(source, filename)):
        hits = [t for t in _targets(node) if _owned(t)]
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in MUTATORS
                and _owned(node.func.value)):
            hits.append(node.func)
        found += [f"{filename}:{h.lineno}: {ast.unparse(h)}" for h in hits]
    return found


def test_no_module_outside_the_runtime_writes_runtime_state() -> None:
    found = []
    for path in sorted(AGENT.rglob("*.py")):
        if (AGENT / "runtime") in path.parents:
            continue
        found += state_writes(path.read_text(encoding="utf-8"), str(path.relative_to(AGENT.parent)))
    assert found == [], "runtime state written outside agent/runtime/ (use a Runtime method):\n" + "\n".join(found)


def test_the_checker_sees_every_form_of_write() -> None:
    bad = {
        "rt.slots[name] = Slot(m)": 1,
        "rt.slots[name].manifest = m": 1,
        "self.runtime.slots = {}": 1,
        "slot.pinned = (v, d)": 1,
        "rt.slots[m].failures += 1": 1,
        "del rt.slots[name]": 1,
        "a, rt.slots[b] = 1, 2": 1,
        "rt.fronts[name] = f": 1,
        "rt.slots.pop(name)": 1,
        "rt.slots.update(other)": 1,
        "slot.pinned: tuple = None": 1,
        "for rt.slots[k] in xs: pass": 1,
    }
    for src, n in bad.items():
        assert len(state_writes(src)) == n, src
    ok = ["x = rt.slots[name].active", "names = sorted(rt.slots)", "h = self.runtime.slots.get(m)",
          "pinned = st['pinned']", "self.capacity = 2", "d[rt.slots] = 1", "rt.put_model(m)"]
    for src in ok:
        assert state_writes(src) == [], src
