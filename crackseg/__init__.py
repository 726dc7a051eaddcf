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


#: The libraries ``--version`` names beside crackseg: those a run's results depend on.
VERSIONED_LIBRARIES = ("torch", "pytorch-lightning", "hydra-core")


def version_line() -> str:
    """What every command's ``--version`` prints."""
    from importlib.metadata import version

    libraries = ", ".join(f"{name} {version(name)}" for name in VERSIONED_LIBRARIES)
    return f"crackseg {__version__} ({libraries})"
