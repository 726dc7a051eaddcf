"""What only a GPU can check: bf16 training of the paper's network, FeatureNorm's CUDA
kernels, Lightning training the network compiled by inductor with CUDA graphs, the benchmark
on CUDA.

Skipped, with the reason, on machines without one (tests/helpers/run_if.py).
"""

import json
import subprocess
import sys

import pytest
import torch
from conftest import REPO
from helpers.feature_norm_case import feature_norm_case, gradients, plain_feature_norm
from helpers.run_if import run_if
from helpers.tiny_module import fit_tiny
from torch._dynamo.utils import counters

from crackseg.models.losses import decision_losses, downsample_to_output, segmentation_losses
from crackseg.models.module_settings import SpeedSettings
from crackseg.models.segdecnet import SegDecNet


def test_run_if_names_what_is_missing():
    assert run_if().mark.args == (False,)
    mark = run_if(min_cuda_gpus=99).mark
    assert mark.args == (True,) and "needs 99 CUDA GPU(s)" in mark.kwargs["reason"]
    if not torch.cuda.is_available():
        mark = run_if(bf16_cuda=True).mark
        assert mark.args == (True,) and "bfloat16" in mark.kwargs["reason"]


@run_if(min_cuda_gpus=1, bf16_cuda=True)
def test_bf16_training_step_of_the_paper_network_on_cuda():
    torch.manual_seed(0)
    net = SegDecNet().cuda()
    images = torch.rand(2, 3, 640, 232, device="cuda")
    mask = torch.zeros(2, 1, 640, 232, device="cuda")
    mask[0, :, 300:340, 100:108] = 1.0
    volume_before = net.volume[0].weight.detach().clone()
    optimizer = torch.optim.SGD(net.parameters(), lr=0.01)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        out = net(images)
    assert out.segmentation.dtype == torch.bfloat16  # autocast did reach the convolutions
    target = downsample_to_output(mask)
    loss = segmentation_losses(out.segmentation.float(), target, torch.ones_like(target)).mean()
    labels = torch.tensor([1.0, 0.0], device="cuda")
    loss = loss + decision_losses(out.decision.float(), labels).mean()
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    assert torch.isfinite(loss)
    for param in net.parameters():  # the weights and their gradients stay float32
        assert param.dtype == param.grad.dtype == torch.float32
        assert torch.isfinite(param.grad).all()
    assert not torch.equal(net.volume[0].weight, volume_before)


@run_if(min_cuda_gpus=1, bf16_cuda=True)
@pytest.mark.parametrize(
    "dtype,tolerance",
    [
        (torch.float32, {"rtol": 1e-4, "atol": 1e-3}),
        # A bf16 input (as under autocast): float32 statistics, one rounding to bf16 at the end.
        (torch.bfloat16, {"rtol": 2**-7, "atol": 1e-2}),
    ],
)
@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
def test_feature_norm_kernels_match_the_formula_on_cuda(dtype, tolerance, layout):
    """FeatureNorm runs on torch's batch-norm kernels (crackseg.models.layers), whose CUDA
    versions the CPU tests do not reach: values and gradients against the formula in float64
    on the CPU, for the same (bf16-rounded) input."""
    norm, x, upstream = feature_norm_case(dtype)
    norm = norm.cuda()
    on_gpu = x.detach().cuda().contiguous(memory_format=layout).requires_grad_()
    y = norm(on_gpu)
    assert y.dtype == dtype and y.is_contiguous(memory_format=layout)
    got = gradients(y, upstream.cuda(), on_gpu, norm.scale, norm.bias)
    x64, scale64, bias64 = (
        t.detach().cpu().double().requires_grad_() for t in (x, norm.scale, norm.bias)
    )
    y64 = plain_feature_norm(x64, scale64, bias64)
    expected = gradients(y64, upstream.double(), x64, scale64, bias64)
    torch.testing.assert_close(y.cpu().float(), y64.float(), **tolerance)
    for gradient, reference in zip(got, expected, strict=True):
        torch.testing.assert_close(gradient.cpu().float(), reference.float(), **tolerance)


@run_if(min_cuda_gpus=1, bf16_cuda=True)
def test_model_compile_reduce_overhead_trains_on_cuda_as_the_eager_network_does():
    """model.compile=reduce-overhead through Lightning in bf16: inductor's kernels and CUDA
    graphs, where the CPU tests (tests/test_compile.py) only trace."""
    on_gpu = {"accelerator": "gpu", "devices": 1, "precision": "bf16-mixed"}
    eager_loss, eager = fit_tiny(SpeedSettings(compile=None), **on_gpu)
    torch._dynamo.reset()
    counters.clear()
    compiled_loss, compiled = fit_tiny(SpeedSettings(compile="reduce-overhead"), **on_gpu)
    assert counters["stats"]["unique_graphs"] == 2  # training and validation, each whole
    # bf16 both, in other kernels (inductor's fused FeatureNorm against batch norm's): on
    # the CPU, traced against eager, the last losses differed by 0.2 %
    assert compiled_loss == pytest.approx(eager_loss, rel=0.05)
    assert list(compiled.state_dict()) == list(eager.state_dict())  # compiled in place


@run_if(min_cuda_gpus=1, bf16_cuda=True)
def test_benchmark_runs_on_cuda(tmp_path):
    rows = ["conv15x15_train/*/bf16/peak", "conv1x1/*/bf16/peak"]
    rows += ["segdec/640x232/b1/bf16/train", "segdec/640x232/b8/fp32/infer"]
    command = [sys.executable, str(REPO / "benchmarks" / "bench.py"), "--device", "cuda"]
    command += ["--quick", "--rows", *rows, "--json", str(tmp_path / "results.json")]
    done = subprocess.run(command, capture_output=True, text=True, cwd=REPO, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads((tmp_path / "results.json").read_text())
    assert report["device"].startswith("cuda")
    volume, conv1x1, train, infer = report["rows"]
    # Batches on a GPU, where one 80x29 map is over in microseconds.
    assert volume["batch"] == 16 and conv1x1["batch"] == 64
    assert report["peak_gflops_per_s"]["bf16"] == max(
        volume["gflops_per_s"], conv1x1["gflops_per_s"]
    )
    assert train["of_peak"] > 0 and infer["of_peak"] is None  # no float32 peak row
    # torch.cuda.max_memory_allocated: at least the weights (15.6 M float32 parameters).
    assert train["peak_mb"] > 15.6e6 * 4 / 2**20 and infer["peak_mb"] > 0


@run_if(min_cuda_gpus=1)
def test_auto_precision_leaves_the_launching_process_free_to_fork_cuda_processes():
    """trainer.precision=auto is resolved before the trainer starts; strategy=ddp_fork then
    forks processes that use the GPU, which CUDA refuses where the parent initialised it."""
    script = """
import multiprocessing, torch
from crackseg.runs.hardware import resolve_precision
print(resolve_precision("auto", "gpu"))
assert not torch.cuda.is_initialized()
def child(queue):
    queue.put(float(torch.ones(1, device="cuda").sum()))
context = multiprocessing.get_context("fork")
queue = context.Queue()
process = context.Process(target=child, args=(queue,))
process.start()
print(queue.get(timeout=120))
process.join()
assert process.exitcode == 0
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO)
    assert done.returncode == 0, done.stderr[-3000:]
    chosen, total = done.stdout.split()
    assert chosen in ("bf16-mixed", "32-true") and float(total) == 1.0
