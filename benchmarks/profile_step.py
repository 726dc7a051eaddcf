"""Where a training step's time goes: torch.profiler over one step, operator by operator.

    python benchmarks/profile_step.py [--precision fp32 bf16] [--model segdec] [--size HxW]
                                      [--batch 1] [--steps 1] [--channels-last]
                                      [--volume-im2col] [--top 12] [--json PATH]

The step is bench.py's (forward under autocast for bf16, both losses in float32, backward,
SGD) on the paper's network at 3x640x232, batch 1, by default. Every operator's own CPU time
(without the operators it calls) goes to one group:

- the volume convolution (the 15x15 one that makes the volume), the encoder convolutions
  (stages 1-3: the small 5x5 ones at full to 1/4 resolution), the head convolutions (the
  segmentation output, the decision subnet, the full-resolution head), FeatureNorm: by the
  module whose forward ran the operator, and for backward by the module whose forward
  operator made the autograd node (the profiler's sequence numbers tie the two);
- casts: ``aten::to``, ``aten::_to_copy``, ``aten::copy_`` wherever they run (autocast's
  weight casts, FeatureNorm's float32 round trip);
- the optimiser: ``zero_grad`` and the SGD step;
- the rest: ReLU, pooling, the losses, autograd's bookkeeping, Python between operators.

Prints a markdown table per precision: the groups, then the operators that took most time.
Warm-up steps run first (oneDNN picks and builds its kernels on the first calls).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from bench import (
    PRECISIONS,
    SETTINGS,
    fail,
    net_arguments,
    parse_size,
    refuse_unwritable_json,
    training_step,
)
from torch import nn
from torch.profiler import ProfilerActivity, profile, record_function

from crackseg import CONFIG_DIR
from crackseg.errors import CracksegError
from crackseg.models.flops import layer_table, training_flops
from crackseg.models.layers import FeatureNorm
from crackseg.models.precision import cpu_bf16_features, cpu_model
from crackseg.models.segdecnet import SegDecNet, check_input_size
from crackseg.runs.allocator import keep_freed_memory

VOLUME = "volume convolution"
ENCODER = "encoder convolutions"
HEAD = "head convolutions"
NORM = "FeatureNorm"
CASTS = "casts"
OPTIMISER = "optimiser"
REST = "rest"
GROUPS = (VOLUME, ENCODER, HEAD, NORM, CASTS, OPTIMISER, REST)
CAST_OPS = {"aten::to", "aten::_to_copy", "aten::copy_"}
#: Where a label starts; a label is a group, with the module's name after it.
LABEL = "crackseg:"
BACKWARD = "autograd::engine::evaluate_function:"


def module_groups(net: SegDecNet) -> dict[nn.Module, str]:
    """The group of each convolution and FeatureNorm of ``net``."""
    groups: dict[nn.Module, str] = {}
    for name, module in net.named_modules():
        if isinstance(module, FeatureNorm):
            groups[module] = NORM
        elif isinstance(module, nn.Conv2d):
            if module is net.volume[0]:
                groups[module] = VOLUME
            elif name.startswith(("stage1", "stage2", "stage3")):
                groups[module] = ENCODER
            else:
                groups[module] = HEAD
    return groups


@contextmanager
def labelled(net: SegDecNet) -> Iterator[None]:
    """Wrap the forward of every grouped module in a profiler range named after its group."""
    ranges: list[record_function] = []

    def enter(group: str):
        def hook(module: nn.Module, args: object) -> None:
            ranges.append(record_function(LABEL + group))
            ranges[-1].__enter__()

        return hook

    def leave(module: nn.Module, args: object, output: object) -> None:
        ranges.pop().__exit__(None, None, None)

    handles = []
    for module, group in module_groups(net).items():
        handles.append(module.register_forward_pre_hook(enter(group)))
        handles.append(module.register_forward_hook(leave))
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def ancestors(event) -> Iterator:  # noqa: ANN001 (torch's FunctionEvent)
    while event is not None:
        yield event
        event = event.cpu_parent


def group_of(event, forward_groups: dict[int, str]) -> tuple[str, str]:  # noqa: ANN001
    """(group, phase) of one profiled event."""
    chain = list(ancestors(event))
    if any(e.name.startswith("Optimizer.") for e in chain):
        return OPTIMISER, "optimiser"
    backward = next((e for e in chain if e.name.startswith(BACKWARD)), None)
    phase = "forward" if backward is None else "backward"
    if event.name in CAST_OPS:
        return CASTS, phase
    if backward is not None:
        return forward_groups.get(backward.sequence_nr, REST), phase
    label = next((e for e in chain if e.name.startswith(LABEL)), None)
    return (REST if label is None else label.name[len(LABEL) :]), phase


def attribute(events: list) -> tuple[dict, dict]:
    """Own CPU time (us) by (group, phase) and by (group, operator)."""
    forward_groups: dict[int, str] = {}
    for event in events:
        if event.sequence_nr >= 0 and not event.name.startswith(BACKWARD):
            label = next((e for e in ancestors(event) if e.name.startswith(LABEL)), None)
            if label is not None:
                forward_groups[event.sequence_nr] = label.name[len(LABEL) :]
    by_phase: dict[tuple[str, str], float] = defaultdict(float)
    by_op: dict[tuple[str, str], list[float]] = defaultdict(lambda: [0.0, 0])
    for event in events:
        group, phase = group_of(event, forward_groups)
        own = event.self_cpu_time_total
        by_phase[group, phase] += own
        name = (
            event.name[len(LABEL) :] + " (Python, hooks)"
            if event.name.startswith(LABEL)
            else event.name
        )
        by_op[group, name][0] += own
        by_op[group, name][1] += 1
    return by_phase, by_op


def conv_flops(net_args: dict, height: int, width: int) -> dict[str, int]:
    """FLOPs of one image's training step in each convolution group (crackseg.models.flops:
    backward costs 2x forward where the input gradient is computed, else 1x)."""
    adjusted = net_args.get("gradient_adjustment", True)
    flops: dict[str, int] = defaultdict(int)
    for layer in layer_table(height, width, **net_args):
        if layer.name == "decision_fc":
            continue
        group = (
            VOLUME
            if layer.name == "volume"
            else ENCODER
            if layer.name.startswith("stage")
            else HEAD
        )
        flops[group] += training_flops(layer, adjusted)
    return flops


def profile_precision(args: argparse.Namespace, precision: str) -> dict:
    torch.manual_seed(0)
    net_args = net_arguments(args.model)
    net = SegDecNet(**net_args)
    net.volume_im2col = args.volume_im2col
    height, width = args.size
    images = torch.rand(args.batch, 3, height, width)
    if args.channels_last:
        net.convolutions_channels_last()
        images = images.contiguous(memory_format=torch.channels_last)
    step = training_step(net, net, images, precision)
    for _ in range(args.warmup):
        step()
    start = time.perf_counter()
    for _ in range(args.steps):
        step()
    unprofiled = (time.perf_counter() - start) / args.steps
    with labelled(net), profile(activities=[ProfilerActivity.CPU], record_shapes=False) as prof:
        for _ in range(args.steps):
            step()
    by_phase, by_op = attribute(list(prof.events()))
    total = sum(by_phase.values())
    flops = conv_flops(net_args, height, width)
    groups = []
    for group in GROUPS:
        phases = {
            p: by_phase.get((group, p), 0.0) / args.steps / 1e3
            for p in ("forward", "backward", "optimiser")
        }
        ms = sum(phases.values())
        rate = flops[group] * args.batch / (ms / 1e3) / 1e9 if group in flops and ms else None
        groups.append(
            {
                "group": group,
                "ms": ms,
                **{f"{p}_ms": v for p, v in phases.items()},
                "share": ms / (total / args.steps / 1e3),
                "gflops_per_s": rate,
            }
        )
    ops = sorted(by_op.items(), key=lambda item: -item[1][0])[: args.top]
    return {
        "precision": precision,
        "step_ms": unprofiled * 1e3,
        "profiled_ms": total / args.steps / 1e3,
        "groups": groups,
        "top_operators": [
            {
                "group": g,
                "operator": name,
                "ms": us / args.steps / 1e3,
                "calls": calls // args.steps,
                "share": us / total,
            }
            for (g, name), (us, calls) in ops
        ],
    }


def fmt(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def report(result: dict, args: argparse.Namespace) -> str:
    height, width = args.size
    lines = [
        f"{args.model} 3x{height}x{width}, batch {args.batch}, {result['precision']}"
        f"{', channels_last' if args.channels_last else ''}"
        f"{', volume im2col' if args.volume_im2col else ''}: a step takes "
        f"{result['step_ms']:,.0f} ms unprofiled, {result['profiled_ms']:,.0f} ms of operator "
        "time profiled",
        "",
        "| group | forward ms | backward ms | optimiser ms | total ms | share | GFLOP/s |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for g in result["groups"]:
        cells = [g["group"], fmt(g["forward_ms"]), fmt(g["backward_ms"]), fmt(g["optimiser_ms"])]
        cells += [fmt(g["ms"]), f"{100 * g['share']:.1f} %", fmt(g["gflops_per_s"])]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "| operator | group | calls | ms | share |", "| --- | --- | ---: | ---: | ---: |"]
    for op in result["top_operators"]:
        cells = [
            op["operator"],
            op["group"],
            str(op["calls"]),
            fmt(op["ms"]),
            f"{100 * op['share']:.1f} %",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def parse_arguments(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--precision", nargs="+", choices=PRECISIONS, default=list(PRECISIONS))
    parser.add_argument("--model", default=SETTINGS[0].model, help="a conf/model name")
    parser.add_argument("--size", type=parse_size, help="input HxW (default: 640x232)")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--steps", type=int, default=1, help="profiled steps (averaged)")
    parser.add_argument("--warmup", type=int, default=2, help="steps before profiling")
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--volume-im2col", action="store_true", help="model.volume_im2col=true")
    parser.add_argument("--top", type=int, default=12, help="operators listed")
    parser.add_argument("--json", type=Path, help="also write the tables here")
    args = parser.parse_args(argv)
    args.size = args.size or (SETTINGS[0].height, SETTINGS[0].width)
    refuse_what_cannot_run(args)
    return args


def refuse_what_cannot_run(args: argparse.Namespace) -> None:
    """One ``error:`` line and exit 2 before anything runs (a traceback, or one after all
    the profiling for a --json that names a folder)."""
    for name, least in (("batch", 1), ("steps", 1), ("warmup", 0), ("top", 1)):
        if getattr(args, name) < least:
            fail(f"--{name} must be >= {least}, not {getattr(args, name)}")
    models = Path(CONFIG_DIR) / "model"
    if not (models / f"{args.model}.yaml").is_file():
        known = sorted(p.stem for p in models.glob("*.yaml"))
        fail(f"--model {args.model}: no such model (known: {', '.join(known)})")
    if args.json is not None:
        refuse_unwritable_json(args.json)
    try:
        check_input_size(*args.size)
    except CracksegError as error:
        fail(f"--size {args.size[0]}x{args.size[1]}: {error}")


def main(argv: list[str] | None = None) -> None:
    args = parse_arguments(argv)
    keep_freed_memory()  # as a training run does (crackseg.runs.trainer)
    features = ", ".join(cpu_bf16_features()) or "none"
    threads = torch.get_num_threads()
    print(f"CPU {cpu_model()} (bf16: {features}), torch {torch.__version__}, {threads} threads")
    results = []
    for precision in args.precision:
        results.append(profile_precision(args, precision))
        print()
        print(report(results[-1], args))
    if args.json:
        document = {
            "cpu": {"model": cpu_model(), "bf16_features": cpu_bf16_features()},
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "results": results,
        }
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(document, indent=2) + "\n")


if __name__ == "__main__":
    sys.exit(main())
