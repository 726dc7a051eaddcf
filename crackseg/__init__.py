"""crackseg: mixed-supervision crack and surface-defect detection (SegDecNet)."""

__version__ = "0.1.0"
