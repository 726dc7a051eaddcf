"""Prove the GPU path in one command (`make gpu-check`), in at most 8 minutes on one GPU.

    python benchmarks/gpu_check.py [--toy] [--budget SECONDS] [--json PATH] [--work-dir DIR]

Runs, in this order, each in its own process, and writes what each gave to
benchmarks/results-gpu.json:

1. the GPU tests: ``pytest tests/test_gpu.py``;
2. the bench rows on cuda: the paper's network at 3x640x232, training, float32 (cuDNN's
   convolutions in TF32, torch's default) and bf16, batch 1 and 16, eager, with the peak rows;
3. DDP on every visible GPU: a short run of the demo with Lightning's ``ddp`` strategy;
4. one epoch of ``experiment=seed_crack_segmentation`` on synthetic 640x232 images
   (a few: training, validation, test and report all run);
5. the bench rows compiled (``torch.compile``) and with CUDA graphs (mode reduce-overhead),
   last because compiling takes longest: what the budget leaves is spent there.

Every step gets what is left of ``--budget`` (480 s); a step the budget does not reach is
recorded as skipped, the compiled bench step it cuts short as ``budget`` (the rows it
measured are kept). Exit status 1 where a step failed or was skipped.

Without a GPU (or with ``--toy``) every step runs at toy size on the CPU, so that the script
itself is tested (tests/test_gpu_check.py): 64x128 inputs, batch 1, one step a bench row,
compiled rows with torch.compile's ``eager`` backend (dynamo's tracing without code
generation), DDP on 2 CPU processes (gloo), the epoch on 8+8 images; its results go to
a file in the temporary folder unless ``--json`` says where.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from xml.etree import ElementTree

import bench  # benchmarks/bench.py, beside this script
import torch

from crackseg.data.synthetic import generate_synthetic_dataset
from crackseg.models.precision import cpu_bf16_features, cpu_model

REPO = Path(__file__).resolve().parent.parent
BENCH = REPO / "benchmarks" / "bench.py"
RESULTS = REPO / "benchmarks" / "results-gpu.json"
BUDGET = 480.0
#: A step is not started with less than this left.
MIN_STEP_SECONDS = 10.0
#: Kept for DDP and the epoch while the eager bench rows run (on a GPU).
RESERVE_SECONDS = 150.0
#: What bench.py gets less than its step: it starts its clock after importing torch, and
#: its step is stopped at the step's end.
BENCH_MARGIN_SECONDS = 20.0


@dataclass(frozen=True)
class Plan:
    """The sizes of one check: the real one on a GPU, or the toy one."""

    toy: bool
    device: str  # cuda | cpu
    height: int
    width: int
    batches: tuple[int, ...]
    peak_rows: tuple[str, ...]
    images_per_class: int  # of the epoch's synthetic set
    ddp_devices: int
    ddp_accelerator: str


def plan_for(toy: bool) -> Plan:
    if not torch.cuda.is_available():
        toy = True
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if toy:
        peaks = ("conv15x15/*/peak",)
        ddp = (2, "cpu") if device == "cpu" else (torch.cuda.device_count(), "gpu")
        return Plan(True, device, 64, 128, (1,), peaks, 8, *ddp)
    peaks = ("conv15x15/*/peak", "conv15x15_train/*/peak", "matmul/*/peak")
    return Plan(False, device, 640, 232, (1, 16), peaks, 32, torch.cuda.device_count(), "gpu")


class Clock:
    """The budget: what is left of it, for the steps that follow."""

    def __init__(self, budget: float) -> None:
        self.deadline = time.monotonic() + budget

    def left(self, reserve: float = 0.0) -> float:
        return self.deadline - time.monotonic() - reserve


def last_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else ""


def run_step(
    name: str,
    command: list[str],
    clock: Clock,
    log_dir: Path,
    reserve: float = 0.0,
    may_run_out: bool = False,
) -> dict:
    """Run one step in its own process with what is left of the budget; its record. A bench
    step that ``may_run_out`` of its budget (the compiled rows) is ``budget`` where it did,
    not failed."""
    seconds = clock.left(reserve)
    record: dict = {"step": name, "command": " ".join(command)}
    if seconds < MIN_STEP_SECONDS:
        return {**record, "status": "skipped", "detail": "the time budget was spent"}
    print(f"gpu-check: {name} ({seconds:.0f} s left)", file=sys.stderr, flush=True)
    start = time.monotonic()
    log = log_dir / f"{name.replace(' ', '-')}.log"
    with log.open("w") as output:
        # A session of its own: at the end of the budget the step is stopped with all it
        # started (bench's row workers, compile workers, DDP processes), which would
        # otherwise hold on to the GPU.
        process = subprocess.Popen(
            command, cwd=REPO, stdout=output, stderr=subprocess.STDOUT, start_new_session=True
        )
        try:
            returncode = process.wait(timeout=seconds)
        except subprocess.TimeoutExpired:
            stop_session(process)
            detail = f"stopped after {seconds:.0f} s: the time budget was spent"
            return {**record, "status": "failed", "seconds": round(seconds, 1), "detail": detail}
        except BaseException:  # Ctrl-C, SIGTERM: the step's processes end with the check
            stop_session(process)
            raise
        stop_session(process)  # what the step left running (a worker its own timeout orphaned)
    record["seconds"] = round(time.monotonic() - start, 1)
    text = log.read_text(errors="replace")
    if may_run_out and returncode == bench.BUDGET_EXIT:
        return {**record, "status": "budget", "detail": last_line(text)}
    if returncode != 0:
        errors = [line for line in text.splitlines() if line.startswith("error:")]
        detail = errors[-1] if errors else last_line(text)
        tail = text.strip().splitlines()[-30:]
        return {**record, "status": "failed", "detail": detail, "output_tail": tail}
    return {**record, "status": "passed", "detail": last_line(text)}


def stop_session(process: subprocess.Popen) -> None:
    """Kill every process left in the session a step was started in, and reap the step."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()


def run_bench_step(
    name: str, plan: Plan, json_path: Path, clock: Clock, log_dir: Path, reserve: float = 0.0
) -> dict:
    """bench.py's eager rows, or (``name`` "bench compiled") its compiled rows, which get what
    the budget leaves and may run out of it."""
    compiled = name == "bench compiled"
    budget = clock.left(reserve) - BENCH_MARGIN_SECONDS
    command = bench_command(plan, json_path, budget, compiled=compiled)
    if budget < MIN_STEP_SECONDS:
        detail = "the time budget was spent"
        return {"step": name, "command": " ".join(command), "status": "skipped", "detail": detail}
    step = run_step(name, command, clock, log_dir, reserve, may_run_out=compiled)
    bench_detail(step, json_path)
    return step


def require_every_test_ran(step: dict, junit_xml: Path) -> None:
    """On a GPU the GPU tests must run: one skipped (no bf16, too few GPUs) fails the step.
    The count is read from the JUnit XML report pytest wrote (``--junitxml``)."""
    if step["status"] != "passed":
        return
    try:
        suites = ElementTree.parse(junit_xml).getroot().iter("testsuite")
        skipped = sum(int(suite.get("skipped", 0)) for suite in suites)
    except (OSError, ElementTree.ParseError, ValueError) as error:
        step["status"] = "failed"
        step["detail"] += f" (no readable test report {junit_xml.name}: {error})"
        return
    if skipped:
        step["status"] = "failed"
        step["detail"] += f" ({skipped} skipped: on a GPU every GPU test must run; see its log)"


def bench_command(plan: Plan, json_path: Path, budget: float, compiled: bool) -> list[str]:
    size = f"{plan.height}x{plan.width}"
    rows = [f"segdec/{size}/b{batch}/*/train" for batch in plan.batches]
    command = [sys.executable, str(BENCH), "--device", plan.device, "--json", str(json_path)]
    command += ["--size", size, "--budget", f"{budget:.0f}"]
    if compiled:
        command += ["--compile", "--cuda-graphs", "--no-eager"]
    else:
        rows = [*plan.peak_rows, *rows]
        # channels_last beside NCHW: what model.channels_last=auto should pick on a GPU
        command += ["--channels-last"]
    command += ["--rows", *rows]
    if plan.toy:
        command += ["--quick"]
        if plan.device == "cpu":
            command += ["--compile-backend", "eager"]
    else:
        command += ["--min-seconds", "2"]
    return command


def train_command(run_dir: Path, *overrides: str) -> list[str]:
    quiet = ["trainer.enable_progress_bar=false", "trainer.enable_model_summary=false"]
    return [sys.executable, "-m", "crackseg.train", *overrides, *quiet, f"hydra.run.dir={run_dir}"]


def ddp_command(plan: Plan, work: Path) -> list[str]:
    """The demo (the narrow network on the embedded synthetic set), one epoch, on DDP."""
    overrides = [
        "trainer=ddp",
        f"trainer.accelerator={plan.ddp_accelerator}",
        f"trainer.devices={plan.ddp_devices}",
        "trainer.max_epochs=1",
        "validation_n_epochs=1",
        "data.input_height=64",
        "data.input_width=128",
        "data.synthetic.num_positives=12",
        "data.synthetic.num_negatives=12",
        "data.batch_size=4",
        "num_dice_panels=2",
        "callbacks.validation_images.num_images=2",
        f"paths.data_dir={work / 'ddp_data'}",
    ]
    if plan.device == "cpu":
        overrides.append("data.num_workers=0")
    return train_command(work / "ddp", *overrides)


def epoch_command(plan: Plan, work: Path) -> list[str]:
    """One epoch of the seed run on synthetic images of its input size (generated here)."""
    root = work / f"seed_{plan.height}x{plan.width}"
    count = plan.images_per_class
    generate_synthetic_dataset(root, count, count, height=plan.height, width=plan.width, seed=0)
    overrides = [
        "experiment=seed_crack_segmentation",
        f"data.root={root}",
        f"data.input_height={plan.height}",
        f"data.input_width={plan.width}",
        "trainer.max_epochs=1",
        "validation_n_epochs=1",
        "num_dice_panels=2",
        "callbacks.validation_images.num_images=2",
    ]
    if plan.device == "cpu":
        overrides.append("data.num_workers=0")
    return train_command(work / "epoch", *overrides)


def run_metrics(run_dir: Path) -> dict | None:
    path = run_dir / "metrics.json"
    if not path.is_file():
        return None
    metrics = json.loads(path.read_text())
    keep = ("image_auc", "image_ap", "dice_mean", "train_samples", "test_samples")
    return {key: metrics.get(key) for key in keep}


def run_detail(step: dict, run_dir: Path) -> None:
    """A training step's record: the test scores of its run, and its folder's name."""
    step["metrics"] = run_metrics(run_dir)
    if step["status"] == "passed" and step["metrics"]:
        m = step["metrics"]
        step["detail"] = (
            f"{m['train_samples']} training images; test: image AUC {m['image_auc']:.3f}, "
            f"Dice {m['dice_mean']:.3f} on {m['test_samples']} images"
        )


def bench_detail(step: dict, json_path: Path) -> None:
    if step["status"] in ("passed", "budget") and json_path.is_file():
        rows = json.loads(json_path.read_text())["rows"]
        measured = [r for r in rows if "error" not in r]
        step["detail"] = f"{len(measured)} of {len(rows)} rows measured"
        if step["status"] == "budget":
            step["detail"] += "; the time budget stopped the others"


def bench_rows(*paths: Path) -> list[dict]:
    rows = []
    for path in paths:
        if path.is_file():
            rows += json.loads(path.read_text())["rows"]
    return rows


def with_peak_shares(rows: list[dict]) -> tuple[dict, list[dict]]:
    """bench.py's "of peak" over the rows of both bench steps (the peak rows are in the
    first)."""
    return bench.peaks(rows), bench.with_peak_shares(rows)


def device_name(plan: Plan) -> str:
    if plan.device == "cuda":
        return f"cuda: {torch.cuda.get_device_name(0)} x {torch.cuda.device_count()}"
    return f"cpu: {cpu_model()}"


def summary(report: dict) -> str:
    lines = ["| step | status | seconds | detail |", "| --- | --- | ---: | --- |"]
    for step in report["steps"]:
        seconds = f"{step['seconds']:.0f}" if "seconds" in step else "-"
        lines.append(f"| {step['step']} | {step['status']} | {seconds} | {step['detail']} |")
    return "\n".join(lines)


def parse_arguments(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--toy", action="store_true", help="toy sizes (always without a GPU)")
    parser.add_argument("--budget", type=float, default=BUDGET, help="seconds for all steps")
    parser.add_argument("--json", type=Path, help=f"where to write (default {RESULTS.name})")
    parser.add_argument("--work-dir", type=Path, help="keep the runs and logs here")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_arguments(argv)
    # SIGTERM as Ctrl-C: the running step's processes are stopped before the check ends
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    plan = plan_for(args.toy)
    default_json = Path(tempfile.gettempdir()) / "crackseg-gpu-check-toy.json"
    json_path = args.json or (default_json if plan.toy else RESULTS)
    if json_path.is_dir():
        print(f"error: --json {json_path} is a folder; name the file to write", file=sys.stderr)
        return 2
    if plan.toy:
        where = "the CPU" if plan.device == "cpu" else "the GPU"
        print(f"gpu-check: toy sizes on {where} (no CUDA device, or --toy)", file=sys.stderr)
    clock = Clock(args.budget)
    start = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="crackseg-gpu-check-") as scratch:
        work = (args.work_dir or Path(scratch)).resolve()
        work.mkdir(parents=True, exist_ok=True)
        logs = work / "logs"
        logs.mkdir(exist_ok=True)
        eager_json, compiled_json = work / "bench-eager.json", work / "bench-compiled.json"
        reserve = 0.0 if plan.toy else RESERVE_SECONDS
        junit_xml = logs / "gpu-tests.xml"
        tests = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"]
        tests += [f"--junitxml={junit_xml}", "tests/test_gpu.py"]
        steps = [run_step("gpu tests", tests, clock, logs)]
        if not plan.toy:
            require_every_test_ran(steps[0], junit_xml)
        steps.append(run_bench_step("bench eager", plan, eager_json, clock, logs, reserve))
        steps.append(run_step("ddp", ddp_command(plan, work), clock, logs))
        run_detail(steps[-1], work / "ddp")
        steps[-1]["devices"] = plan.ddp_devices
        processes = f"{plan.ddp_devices} {plan.ddp_accelerator.upper()} processes"
        steps[-1]["detail"] = f"{processes}; {steps[-1]['detail']}"
        steps.append(run_step("seed epoch", epoch_command(plan, work), clock, logs))
        run_detail(steps[-1], work / "epoch")
        steps.append(run_bench_step("bench compiled", plan, compiled_json, clock, logs))
        peaks, rows = with_peak_shares(bench_rows(eager_json, compiled_json))
    report = {
        "device": device_name(plan),
        "cpu": {"model": cpu_model(), "bf16_features": cpu_bf16_features()},
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "python": platform.python_version(),
        "toy": plan.toy,
        "budget_s": args.budget,
        "seconds": round(time.monotonic() - start, 1),
        "steps": steps,
        "bench": {"peak_gflops_per_s": peaks, "rows": rows},
    }
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(report, indent=2) + "\n")
    print(f"{report['device']}, torch {report['torch']}, {report['seconds']:.0f} s")
    print(summary(report))
    print(f"written: {json_path}")
    incomplete = [s["step"] for s in steps if s["status"] not in ("passed", "budget")]
    if incomplete:
        print(f"error: gpu-check incomplete: {', '.join(incomplete)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
