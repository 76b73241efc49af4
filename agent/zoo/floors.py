"""Recipe floors: the least quality a variant must measure to be served (see docs/ZOO.md).

A recipe variant may declare ``[variants.floors]`` (figure name -> minimum). A variant that falls
below any floor is still built, measured and recorded, but its manifest entry gets
``unfit = "<reason with the figure>"`` and the policy table (agent.policy.table) leaves it out, so
decide() never picks it. Figure names are those of :meth:`agent.zoo.manifest.Quality.figure`
(``quality_rel`` for every kind; a kind plugin lists the ones it measures in ``KindPlugin.floors``).
"""

from __future__ import annotations

from collections.abc import Mapping

from agent.zoo.manifest import Quality

# what a variant from a file no one built here (``zoo import``, a recipe's ``method = "import"``) must keep
# of the reference's quality to be served, unless floors are given for it
DEFAULT_FLOORS: dict[str, float] = {"quality_rel": 0.9}


def unfit_reason(floors: Mapping[str, float], quality: Quality | None) -> str | None:
    """None when every floor holds, else one line naming each failed figure, its value and its floor."""
    fails = []
    for name in sorted(floors):
        lo = floors[name]
        got = quality.figure(name) if quality is not None else None
        if got is None:
            fails.append(f"{name} not measured (floor {lo:g})")
        elif got < lo:
            fails.append(f"{name} {got:.4g} < floor {lo:g}")
    return "; ".join(fails) or None
