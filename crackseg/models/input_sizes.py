"""The input sizes the network takes: its strides, and the check of a size (torch-free, so
that the commands check their settings before torch loads)."""

from __future__ import annotations

from crackseg.errors import ConfigError

#: The network's strides (crackseg.models.segdecnet): its segmentation output is at 1/8 of
#: the input; the decision subnet pools three times more.
OUTPUT_STRIDE = 8
DECISION_STRIDE = OUTPUT_STRIDE * 8


def check_input_size(height: int, width: int) -> None:
    """Refuse sizes the network cannot take, with the reason.

    The decision subnet's last map is 1/64 of the input; FeatureNorm needs a standard
    deviation there, so that map must hold at least 2 pixels (e.g. 64×128, 128×128).
    """
    for name, size in (("height", height), ("width", width)):
        if size % OUTPUT_STRIDE:
            raise ConfigError(
                f"input {name} {size} is not divisible by {OUTPUT_STRIDE} "
                f"(set data.input_{name} to a multiple of {OUTPUT_STRIDE})"
            )
        if size < DECISION_STRIDE:
            raise ConfigError(
                f"input {name} {size} is too small: the decision subnet pools to 1/"
                f"{DECISION_STRIDE}, so height and width must be at least {DECISION_STRIDE}"
            )
    if (height // DECISION_STRIDE) * (width // DECISION_STRIDE) < 2:
        raise ConfigError(
            f"input {height}x{width} is too small: the decision subnet's last map must hold "
            f"at least 2 pixels (e.g. {DECISION_STRIDE}x{2 * DECISION_STRIDE})"
        )
