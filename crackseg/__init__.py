"""crackseg: mixed-supervision crack and surface-defect detection (SegDecNet)."""

__version__ = "0.1.0"

from pathlib import Path

#: Hydra's config tree, at the top of the repository (the package is installed editable).
CONFIG_DIR = str(Path(__file__).resolve().parent.parent / "conf")
