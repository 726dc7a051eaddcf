"""The network of docs/method.md §2-§3: shapes, parameter count, FeatureNorm, gradient flow."""

import math

import pytest
import torch
from helpers.feature_norm_case import feature_norm_case, gradients, plain_feature_norm
from helpers.volume_nodes import record_volume_nodes

from crackseg.errors import ConfigError
from crackseg.models.layers import FeatureNorm, feature_norm_formula
from crackseg.models.losses import decision_losses
from crackseg.models.segdecnet import SegDecNet

SMALL = {"channels": (8, 16, 16), "volume_channels": 32, "volume_kernel": 5}


@pytest.mark.parametrize("height,width", [(64, 128), (128, 96), (72, 136)])
def test_output_shapes(height, width):
    net = SegDecNet(in_channels=3, **SMALL)
    out = net(torch.rand(2, 3, height, width))
    assert out.decision.shape == (2,)
    assert out.segmentation.shape == (2, 1, height // 8, width // 8)


def test_full_resolution_head_predicts_at_input_size():
    net = SegDecNet(in_channels=1, full_resolution=True, full_resolution_width=8, **SMALL)
    out = net(torch.rand(2, 1, 64, 136))
    assert out.segmentation.shape == (2, 1, 64, 136)
    assert out.decision.shape == (2,)


@pytest.mark.parametrize(
    "height,width,words",
    [(100, 64, "divisible by 8"), (56, 128, "at least 64"), (64, 64, "2 pixels")],
)
def test_bad_sizes_are_refused(height, width, words):
    net = SegDecNet(**SMALL)
    with pytest.raises(ConfigError, match=words):
        net(torch.rand(1, 3, height, width))


def test_parameter_count_of_the_paper_network():
    # By hand from the layer table: each conv is in*out*k*k (no bias), each FeatureNorm
    # has scale + bias per channel (the segmentation output's bias is learned too).
    convs = (
        3 * 32 * 25  # 1: conv 5x5 -> 32
        + 32 * 64 * 25
        + 2 * 64 * 64 * 25  # 3-5
        + 4 * 64 * 64 * 25  # 7-10
        + 64 * 1024 * 15 * 15  # 12: the volume
        + 1024 * 1  # 13: 1x1 -> segmentation logits
        + 1025 * 8 * 25
        + 8 * 16 * 25
        + 16 * 32 * 25  # decision convs
    )
    norms = 2 * (32 + 3 * 64 + 4 * 64 + 1024) + 2 + 2 * (8 + 16 + 32)
    linear = 66 + 1
    net = SegDecNet()
    assert sum(p.numel() for p in net.parameters()) == convs + norms + linear == 15_638_813


def test_feature_norm_against_hand_computation():
    x = torch.tensor([1.0, 2.0, 3.0, 4.0]).reshape(1, 1, 2, 2)
    mean = 2.5
    std = math.sqrt((1.5**2 + 0.5**2 + 0.5**2 + 1.5**2) / 3)  # unbiased, as torch.std
    expected = [(v - mean) / math.sqrt(std + 0.001) for v in (1.0, 2.0, 3.0, 4.0)]
    norm = FeatureNorm(1)
    assert torch.allclose(norm(x).flatten(), torch.tensor(expected), atol=1e-6)
    with torch.no_grad():
        norm.scale.fill_(2.0)
        norm.bias.fill_(0.5)
    assert torch.allclose(norm(x).flatten(), 2 * torch.tensor(expected) + 0.5, atol=1e-6)


@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
def test_feature_norm_gives_each_kernel_output_its_own_tensor(layout):
    """The kernels' out= forms get a tensor per output, unused ones too: CUDA's batch norm
    writes save_mean and save_invstd and normalises with them, so one tensor passed as both
    normalised with the inverse deviation for the mean. The CPU's kernel leaves them be, so
    the CUDA test alone (tests/test_gpu.py) would show it; this one runs everywhere."""
    from torch.utils._python_dispatch import TorchDispatchMode

    outputs = []

    class RecordOutputs(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
            kwargs = kwargs or {}
            if func._overloadname == "out":
                outputs.append((func, [v for v in kwargs.values() if isinstance(v, torch.Tensor)]))
            return func(*args, **kwargs)

    norm, x, _ = feature_norm_case(torch.float32)
    with RecordOutputs():
        norm(x.detach().contiguous(memory_format=layout))
    called = {str(func) for func, _ in outputs}
    assert called == {"aten.batch_norm_update_stats.out", "aten.native_batch_norm.out"}
    for func, tensors in outputs:
        assert len({t._cdata for t in tensors}) == len(tensors) >= 2, func


@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
def test_fused_feature_norm_matches_the_plain_formula_values_and_gradients(layout):
    """In NCHW and NHWC alike (the kernels differ, and so does their float32 rounding)."""
    norm, x, upstream = feature_norm_case(torch.float32)
    x = x.detach().contiguous(memory_format=layout).requires_grad_()
    y = norm(x)
    assert y.is_contiguous(memory_format=layout)
    fused = gradients(y, upstream, x, norm.scale, norm.bias)
    # The reference in float64: the fused float32 operation differs by float32 rounding only.
    x64, scale64, bias64 = (
        t.detach().double().requires_grad_() for t in (x, norm.scale, norm.bias)
    )
    y64 = plain_feature_norm(x64, scale64, bias64)
    plain = gradients(y64, upstream.double(), x64, scale64, bias64)
    # The output kernel computes x * a + (bias - mean * a): for the channel whose mean is
    # 2000 times its spread, float32 rounds ~1e-5 off (NHWC), where x - mean first would not.
    torch.testing.assert_close(y, y64.float(), rtol=1e-5, atol=5e-5)
    # Gradients: in that channel the input's own float32 rounding is 1e-4 of its spread;
    # NHWC's kernel comes 1.4e-4 off on two threads, 3.3e-4 on one (NCHW's 7e-5).
    for got, expected in zip(fused, plain, strict=True):
        assert got.dtype == torch.float32
        torch.testing.assert_close(got, expected.float(), rtol=1e-4, atol=1e-3)
    # The constant channel: normalised to its bias, its input gradient the mean-free upstream.
    torch.testing.assert_close(y[:, 2], torch.full((2, 5, 7), -0.3))
    centred = upstream[:, 2] - upstream[:, 2].mean(dim=(1, 2), keepdim=True)
    torch.testing.assert_close(fused[0][:, 2], 2.0 / math.sqrt(0.001) * centred)


@pytest.mark.parametrize(
    "dtype,tolerance",
    [
        # Both NCHW, each within 1e-4 of the float64 formula (above): 2e-4 of each other.
        (torch.float32, {"rtol": 2e-4, "atol": 1e-4}),
        # Each rounds its float32 result to bf16 once: one bf16 step apart at most.
        (torch.bfloat16, {"rtol": 2**-7, "atol": 1e-2}),
    ],
)
def test_the_traced_feature_norm_formula_matches_the_kernels(dtype, tolerance):
    """torch.compile and the ONNX export trace the composed formula; eager runs the kernels."""
    norm, x, upstream = feature_norm_case(dtype)
    eager = norm(x)
    traced = feature_norm_formula(x, norm.scale, norm.bias, norm.eps)
    assert traced.dtype == eager.dtype == dtype
    torch.testing.assert_close(traced, eager, **tolerance)
    tensors = (x, norm.scale, norm.bias)
    both = zip(
        gradients(traced, upstream, *tensors), gradients(eager, upstream, *tensors), strict=True
    )
    for got, expected in both:
        torch.testing.assert_close(got, expected, **tolerance)


@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
def test_fused_feature_norm_in_bf16_computes_in_float32(layout):
    """A bf16 input (as under autocast): computed in float32, rounded to bf16 once at the end."""
    norm, x, upstream = feature_norm_case(torch.bfloat16)
    x = x.detach().contiguous(memory_format=layout).requires_grad_()
    y = norm(x)
    assert y.dtype == torch.bfloat16
    dx, dscale, dbias = gradients(y, upstream, x, norm.scale, norm.bias)
    assert dx.dtype == torch.bfloat16 and dscale.dtype == dbias.dtype == torch.float32
    x32 = x.detach().float().requires_grad_()
    y32 = plain_feature_norm(x32, norm.scale, norm.bias)
    plain = gradients(y32, upstream.float(), x32, norm.scale, norm.bias)
    # bf16 keeps 8 significant bits: one rounding of the result, 2^-8 relative.
    torch.testing.assert_close(y.float(), y32, rtol=2**-8, atol=1e-3)
    torch.testing.assert_close(dx.float(), plain[0], rtol=2**-8, atol=1e-2)
    torch.testing.assert_close(dscale, plain[1], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(dbias, plain[2], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(
    "dtype,layout",
    [
        (torch.float32, torch.contiguous_format),
        (torch.float32, torch.channels_last),
        (torch.bfloat16, torch.channels_last),
    ],
)
def test_the_volume_as_im2col_computes_the_direct_convolution(dtype, layout):
    """model.volume_im2col: the same outputs and gradients as oneDNN's convolution, in its
    input's layout, under bf16 autocast too; and it does run as im2col (torch's
    ``thnn_conv2d``, whose backward node is ``SlowConv2DBackward0``)."""
    torch.manual_seed(0)
    direct = SegDecNet(**SMALL, gradient_adjustment=False).to(memory_format=layout)
    im2col = SegDecNet(**SMALL, gradient_adjustment=False).to(memory_format=layout)
    im2col.load_state_dict(direct.state_dict())
    im2col.volume_im2col = True
    nodes = {"direct": record_volume_nodes(direct), "im2col": record_volume_nodes(im2col)}
    x = torch.rand(2, 3, 64, 128).contiguous(memory_format=layout)
    results = []
    for net in (direct, im2col):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
            out = net(x)
        (out.decision.float().sum() + out.segmentation.float().mean()).backward()
        results.append((out.decision.float(), out.segmentation.float(), net.volume[0].weight.grad))
    assert nodes == {"direct": ["ConvolutionBackward0"], "im2col": ["SlowConv2DBackward0"]}
    # Another summation order: float32's gradients differ by up to 2e-5 (the weight's).
    bf16 = dtype == torch.bfloat16
    tolerance = {"rtol": 2**-7, "atol": 2e-2} if bf16 else {"rtol": 1e-4, "atol": 1e-4}
    for a, b in zip(*results, strict=True):
        torch.testing.assert_close(b, a, **tolerance)


def test_inference_runs_the_volume_as_im2col_a_sample_per_thread(monkeypatch):
    """Without gradients (prediction, validation) im2col unfolds a slice of the batch at a
    time, a sample per thread, instead of the whole batch: the same outputs."""
    from torch.utils._python_dispatch import TorchDispatchMode

    batches = []

    class RecordBatches(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
            if func is torch.ops.aten._slow_conv2d_forward.default:  # thnn_conv2d's kernel
                batches.append(len(args[0]))
            return func(*args, **(kwargs or {}))

    torch.manual_seed(0)
    volume = SegDecNet(**SMALL).volume[0]
    volume.im2col = True
    x = torch.rand(5, 16, 8, 16)
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    with torch.no_grad(), RecordBatches():
        sliced = volume(x)
        volume(x[:2])  # no more samples than threads: one call
    assert batches == [2, 2, 1, 2]
    with torch.no_grad():
        whole = volume._im2col(x, volume.weight)  # the whole batch in one call
    torch.testing.assert_close(sliced, whole, rtol=0, atol=0)
    batches.clear()
    with RecordBatches():
        volume(x)  # training: one call, whose backward needs the whole batch's
    assert batches == [5]


def test_the_flop_counter_counts_the_volume_as_im2col_as_the_convolution():
    """torch's FlopCounterMode (Lightning's model summary runs it) had a formula for
    ``thnn_conv2d``'s forward that did not fit its arguments (crackseg.models.layers)."""
    from torch.utils.flop_counter import FlopCounterMode

    net = SegDecNet(**SMALL).eval()
    counts = []
    for im2col in (False, True):
        net.volume_im2col = im2col
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            net(torch.rand(1, 3, 64, 128))
        counts.append(counter.get_total_flops())
    assert counts[0] == counts[1] > 0


@pytest.mark.parametrize("volume_im2col", [False, True])
@pytest.mark.parametrize("gradient_adjustment", [False, True])
def test_a_channels_last_network_keeps_every_layer_channels_last(
    gradient_adjustment, volume_im2col
):
    """No layer gets an NCHW input, and no convolution an NCHW gradient of its output, from
    an NHWC network: each would be transposed on the way (the decision subnet's input once
    was, by torch.cat). Every parameter's gradient has the parameter's strides, which DDP
    gives its buckets (FeatureNorm's scale and bias once had NHWC strides and NCHW
    gradients: DDP copied them, with a warning)."""
    net = SegDecNet(**SMALL, gradient_adjustment=gradient_adjustment)
    net.convolutions_channels_last()
    net.volume_im2col = volume_im2col
    nchw = []

    def check(module, tensor, what):
        if not tensor.is_contiguous(memory_format=torch.channels_last):
            nchw.append((module, what))

    def check_input(module, args):
        check(module, args[0], "input")

    def check_gradient_later(module, args, output):
        output.register_hook(lambda grad: check(module, grad, "output gradient"))

    for module in net.modules():
        if isinstance(module, torch.nn.Conv2d | torch.nn.MaxPool2d | FeatureNorm):
            module.register_forward_pre_hook(check_input)
        if isinstance(module, torch.nn.Conv2d):
            module.register_forward_hook(check_gradient_later)
    x = torch.rand(2, 3, 64, 128).contiguous(memory_format=torch.channels_last)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = net(x)
    (out.decision.float().sum() + out.segmentation.float().sum()).backward()
    assert nchw == []
    assert [n for n, p in net.named_parameters() if p.grad.stride() != p.stride()] == []
    assert net.volume[0].weight.is_contiguous(memory_format=torch.channels_last)


def test_xavier_normal_init_and_no_conv_bias():
    net = SegDecNet()
    conv = net.volume[0]
    assert conv.bias is None
    fan_in, fan_out = 64 * 15 * 15, 1024 * 15 * 15
    assert conv.weight.std().item() == pytest.approx(math.sqrt(2 / (fan_in + fan_out)), rel=0.02)
    # every convolution with enough weights to measure the spread of
    convs = [m for m in net.modules() if isinstance(m, torch.nn.Conv2d) and m.weight.numel() > 5000]
    assert len(convs) >= 8
    for conv in convs:
        k = conv.kernel_size[0] * conv.kernel_size[1]
        xavier = math.sqrt(2 / (k * (conv.in_channels + conv.out_channels)))
        assert conv.weight.std().item() == pytest.approx(xavier, rel=0.05), conv


def test_the_decision_head_reads_the_pooled_features_and_segmentation_logits():
    """Its last two inputs are the max and the mean of the segmentation logits (not of their
    sigmoid), after the global max and mean of the decision features."""
    torch.manual_seed(0)
    net = SegDecNet(**SMALL).eval()
    seen = {}
    net.decision_fc.register_forward_hook(lambda m, args, out: seen.update(pooled=args[0]))
    with torch.no_grad():
        out = net(torch.rand(2, 3, 64, 128))
    pooled, logits = seen["pooled"], out.segmentation
    assert pooled.shape == (2, net.decision_fc.in_features)
    assert torch.equal(pooled[:, -2], logits.amax(dim=(1, 2, 3)))
    assert torch.allclose(pooled[:, -1], logits.mean(dim=(1, 2, 3)))


def _segmentation_parameters(net):
    return [
        p
        for module in (net.stage1, net.stage2, net.stage3, net.volume, net.seg_mask)
        for p in module.parameters()
    ]


def _decision_parameters(net):
    return list(net.decision_features.parameters()) + list(net.decision_fc.parameters())


@pytest.mark.parametrize("adjust", [True, False])
def test_gradient_flow_adjustment(adjust):
    torch.manual_seed(0)
    net = SegDecNet(**SMALL, gradient_adjustment=True)
    net.gradient_adjustment = adjust  # switchable at run time
    out = net(torch.rand(2, 3, 64, 128))
    decision_losses(out.decision, torch.tensor([1.0, 0.0])).mean().backward()
    seg_grads = [p.grad for p in _segmentation_parameters(net)]
    if adjust:  # no gradient reaches the segmentation subnet: nothing to compute there
        assert all(g is None for g in seg_grads)
    else:
        assert all(g is not None and torch.count_nonzero(g) > 0 for g in seg_grads)
    assert all(torch.count_nonzero(p.grad) > 0 for p in _decision_parameters(net))


def test_gradient_adjustment_trains_the_segmentation_on_its_own_loss_alone():
    """With both losses, the segmentation subnet gets exactly the segmentation loss's
    gradient; the decision subnet gets the decision loss's."""
    from crackseg.models.losses import segmentation_losses

    torch.manual_seed(0)
    net = SegDecNet(**SMALL)
    images, target = torch.rand(2, 3, 64, 128), (torch.rand(2, 1, 8, 16) > 0.9).float()

    def gradients(seg: float, dec: float) -> list[torch.Tensor]:
        net.zero_grad()
        out = net(images)
        loss_seg = segmentation_losses(out.segmentation, target, torch.ones_like(target)).mean()
        loss_dec = decision_losses(out.decision, torch.tensor([1.0, 0.0])).mean()
        (seg * loss_seg + dec * loss_dec).backward()
        return [p.grad.clone() for p in _segmentation_parameters(net)]

    assert all(torch.equal(a, b) for a, b in zip(gradients(1, 1), gradients(1, 0), strict=True))


def test_gradient_adjustment_leaves_forward_unchanged():
    torch.manual_seed(0)
    net = SegDecNet(**SMALL).eval()
    x = torch.rand(1, 3, 64, 128)
    on = net(x).decision
    net.gradient_adjustment = False
    assert torch.equal(on, net(x).decision)


def test_segmentation_bias_is_trained_and_lets_a_clean_image_fall_below_ln2():
    """Zero-mean normalised logits y give mean softplus(y) >= softplus(0) = ln 2 on a clean
    image (Jensen); only the learned FeatureNorm bias of the 1/8 head gets below it."""
    from crackseg.data.data_settings import InputSize
    from crackseg.models.lit_segdec import SegDecModule
    from crackseg.models.losses import segmentation_losses

    torch.manual_seed(0)
    module = SegDecModule(network=SMALL, input_shape=InputSize(height=64, width=128))
    optimizer = module.configure_optimizers()
    bias = module.net.seg_mask[1].bias
    assert bias.requires_grad
    assert any(p is bias for group in optimizer.param_groups for p in group["params"])
    clean = torch.rand(1, 3, 64, 128)
    target = torch.zeros(1, 1, 8, 16)
    ones = torch.ones_like(target)
    for _ in range(10):
        (loss,) = segmentation_losses(module.net(clean).segmentation, target, ones)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert loss.item() < 0.5 * math.log(2)
    assert bias.item() < -1.0
    # With the bias held at 0 the same map cannot go below ln 2.
    with torch.no_grad():
        bias.zero_()
        (floor,) = segmentation_losses(module.net(clean).segmentation, target, ones)
    assert floor.item() >= math.log(2) - 1e-6


def test_the_full_resolution_head_keeps_its_own_bias_and_builds_no_unused_head():
    net = SegDecNet(full_resolution=True, full_resolution_width=8, **SMALL)
    assert net.seg_mask is None
    assert net.full_resolution_head.out.bias is not None


def test_forward_upsamples_probabilities_not_logits():
    """docs/method.md §7: the 1/8 map is turned into probabilities, then upsampled; bilinear
    interpolation and the sigmoid do not commute, so the order shows in the values."""
    import torch.nn.functional as F

    from crackseg.data.data_settings import InputSize
    from crackseg.models.lit_segdec import SegDecModule

    torch.manual_seed(0)
    module = SegDecModule(network=SMALL, input_shape=InputSize(height=64, width=128)).eval()
    images = torch.rand(2, 3, 64, 128)
    with torch.no_grad():
        logits = module.net(images).segmentation
        _, seg = module(images)

    def upsample(x):
        return F.interpolate(x, size=(64, 128), mode="bilinear", align_corners=False)

    torch.testing.assert_close(seg, upsample(torch.sigmoid(logits)))
    assert not torch.allclose(seg, torch.sigmoid(upsample(logits)), atol=1e-4)
