"""The paper's settings that follow from other settings (docs/method.md §10): what makes a
run weak and what a weak run trains with, the rows of Table 4, Severstal's epochs; and the
note a run's report gets where it departs from them.

The configs reach these through the ``${crackseg.*}`` resolvers (crackseg.runs.resolvers),
conf/train.yaml's weak-run rule first of all.
"""

from __future__ import annotations

from typing import Any

from omegaconf import OmegaConf

from crackseg.errors import ConfigError
from crackseg.setting_rules import as_typed, is_integer


def any_segmented(num_segmented: int | None, extra_ranking: str | None = None) -> bool:
    """Whether a run trains on any pixel mask: ``data.num_segmented`` not 0 (null keeps all),
    or weak positives drawn from a ranking (``data.extra_segmented.ranking``). A run without
    is weak. The rules that read it resolve before the config checks see it, so it is
    checked here too."""
    if num_segmented is not None and not (is_integer(num_segmented) and num_segmented >= 0):
        raise ConfigError(f"data.num_segmented must be null or >= 0, not {as_typed(num_segmented)}")
    return num_segmented is None or num_segmented > 0 or bool(extra_ranking)


def if_weak(num_segmented: int | None, *arguments: object) -> object:
    """``WEAK`` in a weak run (no mask trains it: :func:`any_segmented`), else ``OTHERWISE``:
    ``if_weak(N, RANKING, WEAK, OTHERWISE)``, or ``if_weak(N, WEAK, OTHERWISE)`` as the
    configs of runs saved before the ranking counted wrote it (they resolve as they did)."""
    if len(arguments) not in (2, 3):
        raise ConfigError("crackseg.if_weak takes N, RANKING, WEAK, OTHERWISE")
    *ranking, weak, otherwise = arguments
    return otherwise if any_segmented(num_segmented, *ranking) else weak


#: ``loss.weak_gradient_adjustment``: ``published`` keeps gradient-flow adjustment on in weak
#: runs, as every published weak run does; ``off`` turns it off there, a departure from the
#: paper (the decision loss then trains the segmentation subnet).
WEAK_ADJUSTMENT_CHOICES = ("published", "off")


def weak_adjustment(
    num_segmented: int | None, choice: str, extra_ranking: str | None = None
) -> bool:
    """Gradient-flow adjustment of a run: on, except in a weak run with ``choice`` ``off``."""
    if choice not in WEAK_ADJUSTMENT_CHOICES:
        raise ConfigError(
            f"loss.weak_gradient_adjustment must be {' or '.join(WEAK_ADJUSTMENT_CHOICES)}, "
            f"not {as_typed(choice)}"
        )
    return any_segmented(num_segmented, extra_ranking) or choice == "published"


#: Severstal's epochs by training positives: as published for the curve's four sizes
#: (docs/method.md §10); 50 for Table 4's 1000, as the published run script trains its 14
#: rows (docs/method.md §10 gives no number for 1000).
SEVERSTAL_EPOCHS = {300: 90, 750: 80, 1000: 50, 1500: 60, 3000: 40}


def severstal_epochs(train_positives: int | None) -> int:
    """The published epochs of a Severstal training size; the paper trained no other."""
    if train_positives not in SEVERSTAL_EPOCHS:
        sizes = ", ".join(str(s) for s in SEVERSTAL_EPOCHS)
        raise ConfigError(
            f"the paper trains Severstal on {sizes} training positives, not "
            f"{as_typed(train_positives)}: set data.train_positives to one of them, or "
            "trainer.max_epochs"
        )
    return SEVERSTAL_EPOCHS[train_positives]


#: The paper's Table 4 (docs/method.md §10): row -> (supervision, weighted segmentation loss,
#: dynamically balanced loss, gradient-flow adjustment). Row 13 is the published weak run,
#: row 14 the weak run with dynamic balance on (on KSDD at lr 1 and δ 0.01, which
#: conf/sweep/paper_ksdd_components.yaml sets).
TABLE4_ROWS = {
    1: ("full", False, False, False),
    2: ("full", False, True, False),
    3: ("full", False, True, True),
    4: ("full", True, True, False),
    5: ("full", True, False, True),
    6: ("full", True, True, True),
    7: ("mixed", False, False, False),
    8: ("mixed", False, True, False),
    9: ("mixed", False, True, True),
    10: ("mixed", True, True, False),
    11: ("mixed", True, False, True),
    12: ("mixed", True, True, True),
    13: ("weak", True, False, True),
    14: ("weak", True, True, True),
}
TABLE4_SWITCHES = ("weighted_loss", "dynamic_balance", "adjustment")


def _table4_row(row: int) -> tuple[str, bool, bool, bool]:
    if not is_integer(row) or row not in TABLE4_ROWS:  # True == 1 to Python
        raise ConfigError(f"table4_row must be 1..{len(TABLE4_ROWS)}, not {as_typed(row)}")
    return TABLE4_ROWS[row]


def table4(row: int, switch: str) -> bool:
    """Whether a switch (weighted_loss, dynamic_balance, adjustment) is on in a Table 4 row."""
    if switch not in TABLE4_SWITCHES:
        raise ConfigError(f"Table 4 switches are {', '.join(TABLE4_SWITCHES)}, not {switch!r}")
    return _table4_row(row)[1 + TABLE4_SWITCHES.index(switch)]


def table4_segmented(row: int, mixed: int) -> int | None:
    """``data.num_segmented`` of a Table 4 row: all (null), ``mixed``, or 0 (weak)."""
    supervision = _table4_row(row)[0]
    return {"full": None, "mixed": mixed, "weak": 0}[supervision]


def table4_label(row: int) -> str:
    """The row as the summary names it: ``6: full; weighted loss, dynamic balance,
    adjustment on``."""
    supervision, *switches = _table4_row(row)
    on = [
        name.replace("_", " ")
        for name, value in zip(TABLE4_SWITCHES, switches, strict=True)
        if value
    ]
    return f"{row}: {supervision}; {', '.join(on) or 'none'} on"


def weak_run_departures(cfg: Any) -> list[str]:
    """A note when a weak run departs from the published weak runs, which all keep
    gradient-flow adjustment on (Table 4's rows 13 and 14, with the dynamically balanced loss
    off and on); none otherwise. The sweep summary names such jobs too."""
    num_segmented = OmegaConf.select(cfg, "data.num_segmented", default=None)
    ranking = OmegaConf.select(cfg, "data.extra_segmented.ranking", default=None)
    if any_segmented(num_segmented, ranking):
        return []
    if OmegaConf.select(cfg, "loss.gradient_adjustment", default=True) is not False:
        return []
    return [
        "Departs from the published settings: in this weak run gradient-flow adjustment is "
        "off; the published weak runs keep it on (docs/method.md §10)."
    ]
