"""Peak memory of a short training run against the number of tiles in the data folder.

    python benchmarks/memory_vs_dataset_size.py [--sizes 1000 4000] [--workdir DIR] [--quick]

The claim checked: peak memory while training on a folder of 4000 tiles is within 10 % of
that on 1000 tiles (exit status 1 where both ``time -v`` and tree PSS grew by more). Every
size runs the same short schedule (one epoch of ``--train-batches`` batches,
``--eval-batches`` validation and test batches), so only the size of the folder differs:
whatever grows is held per sample (an index, a cache, ...). ``--quick`` (as ``make bench
ARGS=--quick``) checks that the script runs: 100 and 400 tiles, 4 training and 2 evaluation
batches, the growth printed but not judged.

The folders are in the crack_segmentation layout (``images/``, ``masks/``, crack-free tiles
named ``noncrack*``, split 70/15/15 by the data module). The synthetic generator draws the
smallest size once (160x160 tiles, half positives); larger folders repeat those tiles under
new names through hard links (copies where links are refused), which costs no generation
time and leaves what a run holds per sample unchanged.

Memory is reported three ways:
- ``time -v``: the "Maximum resident set size" of ``/usr/bin/time -v``, which is that of the
  largest single process (the trainer), not of the tree: data-loader workers are apart;
- ``tree RSS``: the largest sum of RSS over the trainer and its workers, sampled every
  ``--interval`` s with psutil (counts pages shared between the trainer and its forked
  workers once per process, so it overstates the tree);
- ``tree PSS``: the same with the proportional set size (shared pages split between the
  processes sharing them; Linux only), the fairest figure for the whole tree.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
from bench import fail, refuse_unusable_folder

from crackseg.data.synthetic import generate_synthetic_dataset
from crackseg.errors import CracksegError

#: The largest peak memory accepted, as a multiple of that on the smallest folder.
MAX_GROWTH = 1.10

ROOT = Path(__file__).resolve().parents[1]
TRAIN = Path(sys.executable).with_name("crackseg-train")
TIME = "/usr/bin/time"


def build_folder(base: Path, dst: Path, size: int) -> Path:
    """``dst`` with ``size`` tiles: the tiles of ``base`` repeated under new names."""
    if (dst / "images").is_dir() and len(list((dst / "images").iterdir())) == size:
        return dst
    shutil.rmtree(dst, ignore_errors=True)
    names = sorted(p.name for p in (base / "images").iterdir())
    for sub in ("images", "masks"):
        (dst / sub).mkdir(parents=True)
    for i in range(size):
        name = names[i % len(names)]
        copy = i // len(names)
        new = name if copy == 0 else f"{Path(name).stem}_rep{copy}{Path(name).suffix}"
        for sub in ("images", "masks"):
            try:
                os.link(base / sub / name, dst / sub / new)
            except OSError:
                shutil.copyfile(base / sub / name, dst / sub / new)
    return dst


def tree_memory(proc: psutil.Process) -> tuple[int, int]:
    """(sum of RSS, sum of PSS) in bytes over ``proc`` and its descendants."""
    rss = pss = 0
    try:
        members = [proc, *proc.children(recursive=True)]
    except psutil.Error:
        return 0, 0
    for member in members:
        try:
            info = member.memory_full_info()
        except psutil.AccessDenied:
            try:
                info = member.memory_info()
            except psutil.Error:
                continue
        except psutil.Error:
            continue
        rss += info.rss
        pss += getattr(info, "pss", info.rss)
    return rss, pss


def run_training(data_root: Path, run_dir: Path, args: argparse.Namespace) -> dict[str, float]:
    """One training run under ``/usr/bin/time -v``, its process tree sampled meanwhile."""
    command = [
        TIME,
        "-v",
        str(TRAIN),
        "data=crack_segmentation",
        f"data.root={data_root}",
        "data.input_height=160",
        "data.input_width=160",
        f"data.num_workers={args.workers}",
        "model=segdec_small",
        "trainer.max_epochs=1",
        f"+trainer.limit_train_batches={args.train_batches}",
        f"+trainer.limit_val_batches={args.eval_batches}",
        f"+trainer.limit_test_batches={args.eval_batches}",
        "trainer.enable_progress_bar=false",
        "num_dice_panels=2",
        f"hydra.run.dir={run_dir}",
    ]
    log_path = run_dir.with_suffix(".log")
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    peak_rss = peak_pss = 0
    start = time.perf_counter()
    with log_path.open("w") as log:
        # A session of its own: stopped (Ctrl-C, SIGTERM), the check stops the training and
        # its loader workers with it, before its work folder is removed.
        proc = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, start_new_session=True
        )
        try:
            watched = psutil.Process(proc.pid)
            while proc.poll() is None:
                rss, pss = tree_memory(watched)
                peak_rss, peak_pss = max(peak_rss, rss), max(peak_pss, pss)
                time.sleep(args.interval)
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)  # whatever of the run is left
            proc.wait()
    wall = time.perf_counter() - start
    text = log_path.read_text()
    if proc.returncode != 0:
        # The log lives in the work folder, removed on the way out: its end goes to stderr.
        print("\n".join(text.strip().splitlines()[-30:]), file=sys.stderr)
        sys.exit(f"error: training on {data_root} failed ({proc.returncode}); its log ends above")
    match = re.search(r"Maximum resident set size \(kbytes\): (\d+)", text)
    elapsed = re.search(r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): ([\d:.]+)", text)
    seconds = wall
    if elapsed:
        seconds = 0.0
        for part in elapsed.group(1).split(":"):
            seconds = seconds * 60 + float(part)
    return {
        "time_rss_mb": int(match.group(1)) / 1024 if match else float("nan"),
        "tree_rss_mb": peak_rss / 2**20,
        "tree_pss_mb": peak_pss / 2**20,
        "wall_s": seconds,
    }


def check_arguments(args: argparse.Namespace) -> None:
    """One error: line, exit 2, for arguments the check cannot run with, before any work."""
    if min(args.sizes) < 4:
        fail(f"--sizes must be at least 4 tiles each, not {min(args.sizes)}")
    for option, value, least in (
        ("--train-batches", args.train_batches, 1),
        ("--eval-batches", args.eval_batches, 1),
        ("--workers", args.workers, 0),
    ):
        if value < least:
            fail(f"{option} must be at least {least}, not {value}")
    if not args.interval > 0:
        fail(f"--interval must be a number of seconds > 0, not {args.interval:g}")
    if args.workdir is not None:
        refuse_unusable_folder(args.workdir, "--workdir")
    if not Path(TIME).is_file():  # last: the checks above hold on any machine
        fail(f"{TIME} is needed (apt-get install time)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 4000])
    parser.add_argument("--workdir", type=Path, default=None, help="(a new temporary folder)")
    parser.add_argument("--train-batches", type=int, default=40)
    parser.add_argument("--eval-batches", type=int, default=10)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--interval", type=float, default=0.2, help="sampling period, s")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--keep", action="store_true", help="keep the folders and runs")
    parser.add_argument("--quick", action="store_true", help="a small run that is not judged")
    args = parser.parse_args()
    if args.quick:
        args.sizes, args.train_batches, args.eval_batches = [100, 400], 4, 2
    check_arguments(args)
    sizes = sorted(set(args.sizes))
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="crackseg-memory-"))
    workdir = workdir.resolve()
    try:
        try:
            base = generate_synthetic_dataset(
                workdir / "base",
                num_positives=sizes[0] - sizes[0] // 2,
                num_negatives=sizes[0] // 2,
                height=160,
                width=160,
                seed=args.seed,
            )
        except CracksegError as error:  # a kept --workdir holding other tiles
            fail(f"--workdir {args.workdir}: {error}" if args.workdir else str(error))
        rows = []
        # the data of a kept --workdir is used again; the runs are this check's own
        (workdir / "runs").mkdir(parents=True, exist_ok=True)
        started = time.strftime("%Y-%m-%d_%H-%M-%S_")
        runs = Path(tempfile.mkdtemp(prefix=started, dir=workdir / "runs"))
        for size in sizes:
            folder = build_folder(base, workdir / f"tiles{size}", size)
            print(f"training on {size} tiles ...", file=sys.stderr, flush=True)
            rows.append((size, run_training(folder, runs / f"tiles{size}", args)))
    finally:
        if not args.keep and args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)
    if args.keep or args.workdir is not None:
        print(f"the tiles and runs are kept in {workdir}", file=sys.stderr)
    first = rows[0][1]
    print(
        f"\nschedule: 1 epoch of {args.train_batches} training batches, {args.eval_batches} "
        f"validation and test batches, segdec_small at 160x160, {args.workers} workers\n"
    )
    print(
        "| tiles | peak RSS, time -v (MB) | peak tree RSS (MB) | peak tree PSS (MB) "
        "| wall (s) | ratio to first (time -v / tree PSS) |"
    )
    print("| --- | --- | --- | --- | --- | --- |")
    grown = []
    for size, row in rows:
        ratio = row["time_rss_mb"] / first["time_rss_mb"]
        ratio_pss = row["tree_pss_mb"] / first["tree_pss_mb"]
        print(
            f"| {size} | {row['time_rss_mb']:.0f} | {row['tree_rss_mb']:.0f} "
            f"| {row['tree_pss_mb']:.0f} | {row['wall_s']:.1f} | {ratio:.3f} / {ratio_pss:.3f} |"
        )
        if min(ratio, ratio_pss) > MAX_GROWTH:
            grown.append(f"{size} tiles: x{ratio:.3f} / x{ratio_pss:.3f}")
    if grown and not args.quick:
        limit = f"{sizes[0]} tiles' x{MAX_GROWTH}"
        sys.exit(f"error: peak memory grew with the folder beyond {limit}: {'; '.join(grown)}")


if __name__ == "__main__":
    # SIGTERM as Ctrl-C: the training under way is stopped and the work folder removed
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    main()
