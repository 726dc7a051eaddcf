"""Which kernel ran the volume convolution, as its output's autograd node tells."""

from __future__ import annotations

from crackseg.models.segdecnet import SegDecNet


def record_volume_nodes(net: SegDecNet) -> list[str]:
    """A list filled, on every forward of ``net``, with the autograd node of the volume
    convolution's output by name: ``ConvolutionBackward0`` (oneDNN's direct convolution),
    ``SlowConv2DBackward0`` (im2col, ``thnn_conv2d``), ``NoneType`` (no gradient)."""
    names = []
    net.volume[0].register_forward_hook(
        lambda module, args, output: names.append(type(output.grad_fn).__name__)
    )
    return names
