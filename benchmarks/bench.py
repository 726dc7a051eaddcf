"""Training, inference and data-loading speed, against the FLOP count and the machine's rate.

    python benchmarks/bench.py [--device cpu|cuda] [--quick] [--rows PATTERN ...]
                               [--channels-last] [--volume-im2col] [--compile] [--cuda-graphs]
                               [--size HxW] [--min-seconds S] [--budget S] [--json PATH]

Prints one markdown table and writes its rows to benchmarks/results.json. Rows:
- ``peak``: the rate this machine reaches through torch on one large operation, in float32
  and bfloat16: the paper network's own 15x15 volume convolution at its real shape (forward,
  and forward + backward as in training), a 1x1 convolution on the volume and a matrix
  product. A network row's "of peak" divides by the best peak row of its precision;
- ``train``: one step as the training code takes it (forward under autocast, both losses in
  float32, backward, SGD), for the paper's network at 3x640x232, the CPU demo's network at
  128x128 and the cfd_tiles one at 160x160, at batch 1 and 8 (and 16 on a GPU), in float32
  and bf16;
- ``infer``: the forward pass under ``torch.inference_mode``;
- ``data``: the training loader of that run alone (its workers, decoding, resizing, weight
  maps, augmentation) on synthetic images, to compare with the step rate.

Every row runs in a process of its own, so its peak memory is its own; a network's row
imports neither Hydra nor Lightning there (the parent composes its arguments). ``--rows`` keeps the
rows whose key (``--list`` shows them, e.g. ``segdec/640x232/b1/bf16/train``) matches one of
the shell patterns, in the order of the patterns (what matters most first, where a
``--budget`` may stop the rest). benchmarks/README.md explains the columns and the FLOP count.
"""

from __future__ import annotations

import argparse
import fnmatch
import itertools
import json
import os
import platform
import resource
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf
from torch import nn

from crackseg import CONFIG_DIR
from crackseg.atomic import atomic_write_text
from crackseg.data.synthetic import generate_synthetic_dataset
from crackseg.errors import CracksegError
from crackseg.models.flops import count_flops
from crackseg.models.losses import downsample_to_output, segdec_loss
from crackseg.models.precision import cpu_bf16_features, cpu_model
from crackseg.models.segdecnet import OUTPUT_STRIDE, SegDecNet
from crackseg.runs.allocator import keep_freed_memory
from crackseg.runs.resolvers import register_resolvers

RESULTS = Path(__file__).with_name("results.json")
#: Where --quick writes its rows (checks, not timings), unless --json names a file: not over
#: the measured results.json.
QUICK_RESULTS = Path(__file__).resolve().parents[1] / "outputs" / "bench" / "quick.json"
#: Batch 16 on a GPU checks the estimate of benchmarks/README.md ("The seed run's cost").
BATCHES = {"cpu": (1, 8), "cuda": (1, 8, 16)}
PRECISIONS = ("fp32", "bf16")
#: Matrices of the matrix product's peak row: large enough for MKL's or cuBLAS's best path.
MATMUL_SIZE = {"cpu": 2048, "cuda": 8192}
#: Batch of the convolutions' peak rows: on a GPU one 80x29 map is over in microseconds.
PEAK_BATCH = {"cpu": {"conv1x1": 1, "conv15x15": 1}, "cuda": {"conv1x1": 64, "conv15x15": 16}}


@dataclass(frozen=True)
class Setting:
    """A network at an input size, and the run whose training loader feeds it."""

    model: str  # a conf/model name
    height: int
    width: int
    run: tuple[str, ...]  # overrides of that run
    stored: tuple[int, int] | None = None  # size of the stored images (None: the input size)


SETTINGS = (
    # The seed run: crack_segmentation's 448x448 images resized to 640x232.
    Setting("segdec", 640, 232, ("experiment=seed_crack_segmentation",), (448, 448)),
    Setting("segdec_small", 128, 128, ("experiment=demo",)),  # the CPU demo
    Setting("segdec_small_fullres", 160, 160, ("experiment=cfd_tiles",)),
)


@dataclass(frozen=True)
class Row:
    mode: str  # peak | train | infer | data
    model: str
    height: int
    width: int
    batch: int
    precision: str  # fp32 | bf16 | - (data)
    variant: str = "eager"
    flops_per_image: int | None = None
    channels_last: bool = False
    compiled: str | None = None  # a torch.compile mode (default, reduce-overhead), or eager
    volume_im2col: bool = False  # the volume convolution as im2col (model.volume_im2col)
    # Data rows: the run's overrides (data.root included), what to generate at data.root.
    run: tuple[str, ...] = ()
    data_root: str | None = None
    synthetic: dict | None = None
    # Network and peak rows: the network's arguments (conf/model/<model>.yaml's net); a peak
    # row's are the paper network's, whose volume convolution it runs.
    net: dict | None = None

    @property
    def key(self) -> str:
        parts = [self.model, f"{self.height}x{self.width}", f"b{self.batch}", self.precision]
        return "/".join(p for p in [*parts, self.mode] if p != "-")


@dataclass(frozen=True)
class Timing:
    warmup: int = 3
    min_steps: int = 3
    min_seconds: float = 5.0


@dataclass
class Result:
    images_per_s: float
    steps: int
    seconds: float
    peak_mb: float | None = None


# -- configs --------------------------------------------------------------------------------
def run_config(*overrides: str) -> DictConfig:
    from hydra import compose, initialize_config_dir

    register_resolvers()  # the configs' ${crackseg.*} interpolations (a row's process too)
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return compose("train", overrides=list(overrides))


def net_arguments(model: str) -> dict:
    return OmegaConf.to_container(run_config(f"model={model}").model.net, resolve=True)


@dataclass(frozen=True)
class VolumeConv:
    """The paper network's largest convolution: the one that makes the volume (71 % of its
    FLOPs at 640x232), ``in_channels -> out_channels`` with a ``kernel`` x ``kernel`` kernel."""

    in_channels: int
    out_channels: int
    kernel: int


def volume_conv(net: dict) -> VolumeConv:
    """The volume convolution of the network with arguments ``net``."""
    return VolumeConv(net["channels"][-1], net["volume_channels"], net["volume_kernel"])


# -- measuring (in the row's own process) --------------------------------------------------
#: Steps the host may launch ahead before it waits for the device (CUDA).
CUDA_STEPS_BETWEEN_WAITS = 4


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(step: Callable[[], int], device: torch.device, timing: Timing) -> Result:
    """Warm-up steps first, then steps until both minimums are reached.

    ``step`` returns how many images it took. On CUDA the host runs ahead of the device: it
    waits for the device every ``CUDA_STEPS_BETWEEN_WAITS`` steps, so that the clock it
    reads is that of the work done, not of the launches (which alone would queue far more
    than ``min_seconds`` of work), while the launches of those steps still overlap.
    """
    for _ in range(timing.warmup):  # allocator, oneDNN/cuDNN kernel choice, compilation
        step()
    synchronize(device)
    if device.type == "cuda":  # the steps' peak, not cuDNN's benchmark trials or compiling
        torch.cuda.reset_peak_memory_stats(device)
    between_waits = 1
    if device.type == "cuda":
        between_waits = min(CUDA_STEPS_BETWEEN_WAITS, max(1, timing.min_steps))
    steps = images = 0
    start = time.perf_counter()
    while steps < timing.min_steps or time.perf_counter() - start < timing.min_seconds:
        for _ in range(between_waits):
            images += step()
            steps += 1
        synchronize(device)
    seconds = time.perf_counter() - start
    return Result(images / seconds, steps, seconds)


def peak_memory_start(device: torch.device) -> float:
    """The reference the row's peak is measured from (MB)."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return 0.0
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def peak_memory_since(start: float, device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - start


def autocast(device: torch.device, precision: str) -> torch.autocast:
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")


def training_step(
    net: SegDecNet, model: Callable, images: torch.Tensor, precision: str
) -> Callable[[], None]:
    """One training step of ``net`` (run as ``model``: itself or compiled) on ``images``:
    what ``SegDecModule.training_step`` and Lightning do per batch, on random masks with
    ~3 % crack pixels and a plain SGD step."""
    device, batch = images.device, images.shape[0]
    height, width = images.shape[-2:]
    mask = (torch.rand(batch, 1, height, width, device=device) > 0.97).float()
    weight = torch.ones_like(mask)
    labels = torch.ones(batch, device=device)
    segmented = torch.ones(batch, dtype=torch.bool, device=device)
    # A small rate: the FLOPs do not depend on it, and random data must not diverge.
    optimizer = torch.optim.SGD(net.parameters(), lr=0.01)

    def step() -> None:
        with autocast(device, precision):
            out = model(images)
        target, weights = mask, weight
        if not net.full_resolution:  # as the training step does, every step
            target, weights = downsample_to_output(mask), downsample_to_output(weight)
        # The training step's loss.
        loss = segdec_loss(
            out.segmentation, target, weights, out.decision, labels, segmented, (1.0, 0.1)
        ).total
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    return step


def compile_network(net: nn.Module, mode: str | None, backend: str) -> Callable:
    """``net`` under torch.compile in ``mode``, or itself when ``mode`` is None. A backend
    other than inductor (``eager``: dynamo's tracing alone, seconds instead of a minute)
    takes no mode."""
    if mode is None:
        return net
    if backend != "inductor":
        return torch.compile(net, backend=backend)
    return torch.compile(net, mode=mode)


def measure_model(
    row: Row, device: torch.device, timing: Timing, backend: str = "inductor"
) -> Result:
    """A training step or a forward pass of the network on a random batch."""
    torch.manual_seed(0)
    start = peak_memory_start(device)
    net = SegDecNet(**row.net).to(device)
    net.volume_im2col = row.volume_im2col
    shape = (row.batch, 3, row.height, row.width)
    images = torch.rand(shape, device=device)
    if row.channels_last:
        net.convolutions_channels_last()
        images = images.contiguous(memory_format=torch.channels_last)
    model = compile_network(net, row.compiled, backend)
    if row.mode == "infer":
        net.eval()

        def step() -> int:
            with torch.inference_mode(), autocast(device, row.precision):
                model(images)
            return row.batch

    else:
        train = training_step(net, model, images, row.precision)

        def step() -> int:
            train()
            return row.batch

    result = timed(step, device, timing)
    result.peak_mb = peak_memory_since(start, device)
    return result


def measure_peak(row: Row, device: torch.device, timing: Timing) -> Result:
    """The machine's rate on one large operation, in the row's precision (the tensors
    themselves in that type)."""
    dtype = torch.bfloat16 if row.precision == "bf16" else torch.float32
    if row.model == "matmul":
        a = torch.randn(row.height, row.width, device=device, dtype=dtype)
        b = torch.randn(row.width, row.height, device=device, dtype=dtype)

        def step() -> int:
            torch.mm(a, b)
            return 1

        return timed(step, device, timing)

    conv = volume_conv(row.net)
    cin, kernel = (
        (conv.out_channels, 1) if row.model == "conv1x1" else (conv.in_channels, conv.kernel)
    )
    shape = (row.batch, cin, row.height, row.width)
    backward = row.model == "conv15x15_train"
    x = torch.randn(shape, device=device, dtype=dtype, requires_grad=backward)
    w = torch.randn(conv.out_channels, cin, kernel, kernel, device=device, dtype=dtype)
    w.requires_grad_(backward)
    grad = torch.randn(
        row.batch, conv.out_channels, row.height, row.width, device=device, dtype=dtype
    )

    def step() -> int:
        y = F.conv2d(x, w, padding=kernel // 2)
        if backward:  # the input and weight gradients, as the training step computes them
            x.grad = w.grad = None
            y.backward(grad)
        return row.batch

    return timed(step, device, timing)


def measure_data(row: Row, timing: Timing) -> Result:
    """Images/s of the run's training loader alone, epoch after epoch."""
    from crackseg.data.datamodule import CrackDataModule  # Lightning: data rows only

    config = run_config(*row.run)
    module = CrackDataModule.from_config(config.data, config.loss)
    module.setup("fit")
    loader = module.train_dataloader()

    def batches():
        epoch = 0
        while True:
            loader.sampler.set_epoch(epoch)
            yield from loader
            epoch += 1

    stream = batches()
    # The last batch of an epoch may be short: count the images.
    return timed(lambda: len(next(stream)["label"]), torch.device("cpu"), timing)


def measure(row: Row, device: torch.device, timing: Timing, backend: str) -> Result:
    if row.mode == "peak":
        return measure_peak(row, device, timing)
    if row.mode == "data":
        return measure_data(row, timing)
    return measure_model(row, device, timing, backend)


# -- planning and reporting (the parent process) -------------------------------------------
def peak_rows(device: torch.device, size: tuple[int, int] | None) -> list[Row]:
    """The convolutions on the paper network's volume at its input size (or ``size``), and
    a large matrix product, in each precision."""
    setting = SETTINGS[0]
    net = net_arguments(setting.model)
    conv = volume_conv(net)
    height, width = size or (setting.height, setting.width)
    h, w = height // OUTPUT_STRIDE, width // OUTPUT_STRIDE
    batch = PEAK_BATCH[device.type]
    volume = 2 * conv.in_channels * conv.out_channels * conv.kernel**2 * h * w
    wide = f"{conv.in_channels}->{conv.out_channels}"
    n = MATMUL_SIZE[device.type]
    rows = []
    for precision in PRECISIONS:
        shape = (h, w, batch["conv15x15"], precision)
        rows.append(Row("peak", "conv15x15", *shape, f"F.conv2d {wide}", volume, net=net))
        name = f"F.conv2d {wide}, forward + backward"
        # The input and the weight gradient each cost a forward.
        rows.append(Row("peak", "conv15x15_train", *shape, name, 3 * volume, net=net))
        flops = 2 * conv.out_channels**2 * h * w
        wide1 = f"{conv.out_channels}->{conv.out_channels}"
        shape1 = (h, w, batch["conv1x1"], precision, f"F.conv2d {wide1}", flops)
        rows.append(Row("peak", "conv1x1", *shape1, net=net))
        rows.append(Row("peak", "matmul", n, n, 1, precision, "torch.mm", 2 * n**3))
    return rows


#: torch.compile modes of the compiled rows: --compile, --cuda-graphs.
COMPILE_MODES = {"compile": "default", "cuda_graphs": "reduce-overhead"}


def variants(args: argparse.Namespace) -> list[tuple[bool, bool, str | None]]:
    """The (channels_last, volume im2col, compile mode) triples measured: eager always, the
    others on request."""
    layouts = (False, True) if args.channels_last else (False,)
    im2col = (False, True) if args.volume_im2col else (False,)
    modes = [None] + [mode for flag, mode in COMPILE_MODES.items() if getattr(args, flag)]
    triples = list(itertools.product(layouts, im2col, modes))
    return triples[1:] if args.no_eager else triples


def variant_name(channels_last: bool, volume_im2col: bool, mode: str | None) -> str:
    modes = {None: None, "default": "compiled", "reduce-overhead": "compiled reduce-overhead"}
    names = [
        "channels_last" if channels_last else None,
        "volume im2col" if volume_im2col else None,
        modes[mode],
    ]
    return ", ".join(n for n in names if n) or "eager"


def setting_rows(
    setting: Setting, args: argparse.Namespace, data_dir: Path, images_per_class: int
) -> list[Row]:
    """The train and infer rows of a network, then the data row of its run."""
    height, width = args.size or (setting.height, setting.width)
    net = net_arguments(setting.model)
    flops = count_flops(height, width, **net)
    per_image = {"train": flops.train_step, "infer": flops.forward}
    shape = (setting.model, height, width)
    rows = []
    for mode, batch, precision, (layout, im2col, compile_mode) in itertools.product(
        ("train", "infer"), BATCHES[args.device], PRECISIONS, variants(args)
    ):
        name = variant_name(layout, im2col, compile_mode)
        variant = (name, per_image[mode], layout, compile_mode, im2col)
        rows.append(Row(mode, *shape, batch, precision, *variant, net=net))
    return [*rows, data_row(setting, height, width, data_dir, images_per_class, args.size)]


def data_row(
    setting: Setting,
    height: int,
    width: int,
    data_dir: Path,
    images_per_class: int,
    size: tuple[int, int] | None,
) -> Row:
    """The training loader of the setting's run, on synthetic images made in ``data_dir``."""
    stored = setting.stored if size is None else None
    source_height, source_width = stored or (height, width)
    synthetic = dict(
        num_positives=images_per_class,
        num_negatives=images_per_class,
        height=source_height,
        width=source_width,
        seed=0,
    )
    root = str(data_dir / f"{setting.model}_{source_height}x{source_width}_n{images_per_class}")
    run = (*setting.run, f"data.root={root}")
    run += (f"data.input_height={height}", f"data.input_width={width}")
    config = run_config(*run)
    data = config.data
    notes = [f"{data.num_workers} workers"]
    if config.loss.weighted_seg:
        notes.append("weight maps")
    if data.augment.enabled:
        notes.append("augmentation")
    if stored:
        notes.append(f"resized from {source_height}x{source_width}")
    shape = (setting.model, height, width, data.batch_size, "-", ", ".join(notes))
    return Row("data", *shape, run=run, data_root=root, synthetic=synthetic)


#: What marks the record of a row the time budget stopped or never reached.
CUT = {"cut_by_budget": True}
#: bench.py's exit status where rows were cut by the budget and none failed.
BUDGET_EXIT = 3


def run_row(
    row: Row, device: str, timing: Timing, backend: str = "inductor", seconds: float | None = None
) -> dict:
    """Measure ``row`` in a fresh process, given at most ``seconds``; its record for
    results.json."""
    record = {
        "model": row.model,
        "input": f"{row.height}x{row.width}",
        "batch": row.batch,
        "precision": row.precision,
        "mode": row.mode,
        "variant": row.variant,
        "channels_last": row.channels_last,
        "compiled": row.compiled,
        "volume_im2col": row.volume_im2col,
        "flops_per_image": row.flops_per_image,
    }
    if seconds is not None and seconds <= 0:
        return {**record, "error": "not run: the time budget (--budget) was spent", **CUT}
    if row.synthetic is not None:
        generate_synthetic_dataset(row.data_root, **row.synthetic)
    spec = json.dumps({"row": asdict(row), "timing": asdict(timing), "backend": backend})
    command = [sys.executable, __file__, "--device", device, "--worker", spec]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=seconds)
    except subprocess.TimeoutExpired:
        stopped = f"stopped after {seconds:.0f} s: the time budget (--budget)"
        return {**record, "error": stopped, **CUT}
    if done.returncode != 0:
        lines = done.stderr.strip().splitlines() or [f"exit code {done.returncode}"]
        print(done.stderr[-3000:], file=sys.stderr)
        return {**record, "error": lines[-1]}
    result = json.loads(done.stdout.strip().splitlines()[-1])
    gflops = None
    if row.flops_per_image is not None:
        gflops = row.flops_per_image * result["images_per_s"] / 1e9
    return {**record, **result, "gflops_per_s": gflops}


def machine(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return cpu_model()


FLOPS_NOTE = (
    "crackseg.models.flops: convolutions and the linear layer, 2 FLOPs a multiply-add; "
    "train = forward + backward (input and weight gradients)"
)
MEMORY_NOTE = {
    "cpu": "growth of the row process's peak resident set (ru_maxrss) from before the network "
    "is built to the end of the timed steps",
    "cuda": "torch.cuda.max_memory_allocated over the timed steps, after the warm-up steps "
    "(network, optimiser state, batch, activations; not cuDNN's benchmark trials)",
}


def fmt(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def peaks(records: list[dict]) -> dict[str, float]:
    """The best GFLOP/s of the peak rows of each precision (what "of peak" divides by)."""
    best: dict[str, float] = {}
    for r in records:
        if r["mode"] == "peak" and r.get("gflops_per_s"):
            best[r["precision"]] = max(best.get(r["precision"], 0.0), r["gflops_per_s"])
    return best


def with_peak_shares(records: list[dict]) -> list[dict]:
    """Each record with ``of_peak``: its GFLOP/s over the best peak row of its precision in
    the same run (None without a FLOP count or a peak row of that precision)."""
    best = peaks(records)
    shared = []
    for r in records:
        reference = best.get(r["precision"])
        gflops = r.get("gflops_per_s")
        share = gflops / reference if gflops is not None and reference else None
        shared.append({**r, "of_peak": share})
    return shared


def table(records: list[dict]) -> str:
    lines = [
        "| model | input | batch | precision | mode | variant | images/s | GFLOP/s "
        "| of peak | peak MB |",
        "| --- | --- | --- | --- | --- | --- | ---: | ---: | ---: | ---: |",
    ]
    for r in records:
        cells = [r["model"], r["input"], str(r["batch"]), r["precision"], r["mode"], r["variant"]]
        if "error" in r:
            outcome = "" if r.get("cut_by_budget") else "failed: "
            cells += [f"{outcome}{r['error']}", "-", "-", "-"]
        else:
            gflops, share = r["gflops_per_s"], r["of_peak"]
            share_text = "-" if share is None else f"{100 * share:.0f} %"
            digits = 2 if r["images_per_s"] < 10 else 1
            cells += [fmt(r["images_per_s"], digits), fmt(gflops), share_text, fmt(r["peak_mb"], 0)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def parse_size(text: str) -> tuple[int, int]:
    try:
        height, width = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not HxW: {text!r}") from None
    return height, width


def parse_arguments(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default_device = "cuda" if torch.cuda.is_available() else "cpu"
    parser.add_argument("--device", choices=["cpu", "cuda"], default=default_device)
    parser.add_argument("--quick", action="store_true", help="one step a row: checks, no timing")
    parser.add_argument(
        "--rows", nargs="+", metavar="PATTERN", help="keep matching row keys, in this order"
    )
    parser.add_argument("--list", action="store_true", help="list the row keys and exit")
    parser.add_argument("--channels-last", action="store_true", help="add channels_last rows")
    parser.add_argument("--compile", action="store_true", help="add torch.compile rows")
    parser.add_argument(
        "--volume-im2col",
        action="store_true",
        help="add rows with the volume convolution as im2col (model.volume_im2col)",
    )
    parser.add_argument(
        "--cuda-graphs",
        action="store_true",
        help="add torch.compile rows in mode reduce-overhead (CUDA graphs on a GPU)",
    )
    parser.add_argument(
        "--compile-backend",
        default="inductor",
        help="torch.compile's backend (eager: dynamo's tracing alone, to check the rows run)",
    )
    parser.add_argument(
        "--no-eager", action="store_true", help="only the rows the options above add"
    )
    parser.add_argument("--min-seconds", type=float, help="time each row at least this long")
    parser.add_argument("--budget", type=float, help="seconds for all rows; later ones skipped")
    parser.add_argument("--size", type=parse_size, help="one input size HxW for every network")
    parser.add_argument(
        "--json",
        type=Path,
        help=f"where the rows go (default benchmarks/{RESULTS.name}; with --quick "
        "outputs/bench/quick.json)",
    )
    parser.add_argument("--data-dir", type=Path, help="keep the synthetic images here")
    parser.add_argument("--worker", help=argparse.SUPPRESS)  # one row, in its own process
    args = parser.parse_args(argv)
    if args.json is None:
        args.json = QUICK_RESULTS if args.quick else RESULTS
    return args


def worker(device: str, spec: str) -> None:
    """Measure one row; its result is the last line of stdout."""
    spec = json.loads(spec)
    row = Row(**{**spec["row"], "run": tuple(spec["row"]["run"])})
    # As a training run does (crackseg.runs.trainer: trainer.benchmark=null): cuDNN times its
    # algorithms for the row's one input size. Without it the bf16 15x15 convolution ran at
    # 5 % of the H200's bf16 peak on 2026-12-04.
    torch.backends.cudnn.benchmark = True
    result = measure(row, torch.device(device), Timing(**spec["timing"]), spec["backend"])
    print(json.dumps(asdict(result)))


def fail(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def refuse_unwritable_json(path: Path) -> None:
    """Refuse a --json that names a folder or a place no file can be written, before any
    row is measured (not with a traceback after the first)."""
    if path.is_dir():
        fail(f"--json {path} is a folder; name the file to write")
    existing = next(p for p in path.absolute().parents if p.exists())
    if not existing.is_dir():
        fail(f"--json {path}: {existing} is a file, not a folder")
    try:  # where the file (or the first of the folders made for it) will be written
        with tempfile.NamedTemporaryFile(dir=existing, prefix=".bench-write-check-"):
            pass
    except OSError as error:
        fail(f"--json {path}: cannot write there ({error.strerror or error})")


def refuse_unusable_folder(path: Path, option: str) -> None:
    """Refuse a folder option (``--data-dir``) that names a file, or a place no folder can
    be made, before any work (not with a traceback minutes later)."""
    existing = next(p for p in [path.absolute(), *path.absolute().parents] if p.exists())
    if not existing.is_dir():
        what = "is a file" if existing == path.absolute() else f"is under {existing}, a file"
        fail(f"{option} {path} {what}, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        fail(f"{option} {path}: cannot write in {existing}")


def main(argv: list[str] | None = None) -> None:
    args = parse_arguments(argv)
    if args.worker:
        keep_freed_memory()  # as a training run does (crackseg.runs.trainer)
        worker(args.device, args.worker)
        return
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        fail("--device cuda, but torch sees no CUDA device")
    refuse_unwritable_json(args.json)
    if args.data_dir is not None:
        refuse_unusable_folder(args.data_dir, "--data-dir")
    if args.budget is not None and not args.budget >= 0:  # 0: every row cut, as spent
        fail(f"--budget must be a number of seconds >= 0, not {args.budget:g}")
    if args.no_eager and not variants(args):
        fail(
            "--no-eager leaves no network row: add --channels-last, --volume-im2col, --compile"
            " or --cuda-graphs"
        )
    with tempfile.TemporaryDirectory(prefix="crackseg-bench-") as scratch:
        data_dir = (args.data_dir or Path(scratch)).resolve()
        # --quick checks that the script runs: no warm-up, one step a row, fewer images.
        timing = Timing(warmup=0, min_steps=1, min_seconds=0.0) if args.quick else Timing()
        if args.min_seconds is not None:
            timing = Timing(timing.warmup, timing.min_steps, args.min_seconds)
        deadline = None if args.budget is None else time.monotonic() + args.budget
        images_per_class = 8 if args.quick else 64
        rows = peak_rows(device, args.size)
        try:
            for setting in SETTINGS:
                rows += setting_rows(setting, args, data_dir, images_per_class)
        except CracksegError as error:  # an input size the network cannot take
            size = f"--size {args.size[0]}x{args.size[1]}: " if args.size else ""
            fail(f"{size}{error}")
        if args.rows:
            # in the patterns' order, each row once (by identity: rows hold dicts)
            matching = {id(r): r for p in args.rows for r in rows if fnmatch.fnmatchcase(r.key, p)}
            rows = list(matching.values())
            if not rows:
                fail(f"no row matches {' '.join(args.rows)} (--list shows the keys)")
        if args.list:
            print("\n".join(f"{r.key}  ({r.variant})" for r in rows))
            return
        records = []
        for i, row in enumerate(rows, 1):
            print(f"[{i}/{len(rows)}] {row.key} ({row.variant})", file=sys.stderr, flush=True)
            seconds = None if deadline is None else deadline - time.monotonic()
            records.append(run_row(row, args.device, timing, args.compile_backend, seconds))
            # after every row, so a run stopped from outside keeps the rows it measured
            report = write_report(args.json, device, timing, records)
    print(
        f"{report['device']}, torch {report['torch']}, threads: {report['threads']}; "
        f"CPU {report['cpu']['model']}, "
        f"bf16 features: {', '.join(report['cpu']['bf16_features']) or 'none'}"
    )
    print(table(report["rows"]))
    print(f"rows written to {args.json}", file=sys.stderr)
    cut = [r for r in records if r.get("cut_by_budget")]
    failed = [r for r in records if "error" in r and not r.get("cut_by_budget")]
    if failed:
        print(f"error: {len(failed)} of {len(records)} rows failed", file=sys.stderr)
        sys.exit(1)
    if cut:
        print(f"the time budget (--budget) stopped {len(cut)} of {len(records)} rows")
        sys.exit(BUDGET_EXIT)


def write_report(path: Path, device: torch.device, timing: Timing, records: list[dict]) -> dict:
    """results.json of the rows measured so far."""
    report = {
        "device": f"{device.type}: {machine(device)}",
        # The host's CPU, on a GPU too; rates differ between machines.
        "cpu": {"model": cpu_model(), "bf16_features": cpu_bf16_features()},
        "peak_gflops_per_s": peaks(records),
        "torch": torch.__version__,
        "threads": torch.get_num_threads() if device.type == "cpu" else None,
        "python": platform.python_version(),
        "timing": asdict(timing),
        "flops_per_image": FLOPS_NOTE,
        "peak_mb": MEMORY_NOTE[device.type],
        "rows": with_peak_shares(records),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(report, indent=2) + "\n")
    return report


if __name__ == "__main__":
    # SIGTERM as Ctrl-C: subprocess.run stops the row being measured before the bench ends
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    main()
