"""Image- and pixel-level metrics, plots and the markdown report."""
