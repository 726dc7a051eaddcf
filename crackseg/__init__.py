"""crackseg: mixed-supervision crack and surface-defect detection (SegDecNet)."""

__version__ = "0.1.0"

from pathlib import Path


def _config_dir() -> Path:
    """Hydra's config tree: ``crackseg/conf/`` in an installed wheel, else ``conf/`` beside
    the package (the source tree and editable installs, where conf/ stays at the top)."""
    package = Path(__file__).resolve().parent
    installed = package / "conf"
    return installed if installed.is_dir() else package.parent / "conf"


CONFIG_DIR = str(_config_dir())
