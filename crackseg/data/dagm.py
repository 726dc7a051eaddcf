"""DAGM 2007 as a DataModule: ``data.dagm_class`` picks the class a run trains on.

The paper trains one model per class and reports the ten classes together: a class is its
fold. So ``data.dagm_class=K`` is fold K of the paper (K = 1..10), fold i of a published
split file (counted from 0) is ``ClassI+1`` (``crackseg-data import-split --fold``), and a
multirun over ``data.dagm_class`` joins the classes' test scores like the folds of KSDD
(crackseg.sweep.folds).
"""

from __future__ import annotations

from typing import Any

from crackseg.data.datamodule import CrackDataModule
from crackseg.errors import ConfigError


class DagmDataModule(CrackDataModule):
    """The ``dagm`` layout on one class folder ``ClassK`` under ``root``."""

    def __init__(
        self, dagm_class: int = 1, layout_options: dict[str, Any] | None = None, **kwargs: Any
    ) -> None:
        if isinstance(dagm_class, bool) or not isinstance(dagm_class, int) or dagm_class < 1:
            raise ConfigError(f"data.dagm_class must be a class number 1..10, not {dagm_class!r}")
        options = {**(layout_options or {}), "class_id": dagm_class}
        super().__init__(layout_options=options, **kwargs)
        self.dagm_class = dagm_class
