"""benchmarks/bench.py: one quick run on a tiny input, its records and their GFLOP/s."""

import importlib.util
import json
import os
import signal
import subprocess
import sys
import time

import psutil
import pytest
import torch
from conftest import REPO, one_line_error
from test_flops import measured

from crackseg.models.precision import cpu_bf16_features, cpu_model
from crackseg.models.segdecnet import SegDecNet

BENCH = REPO / "benchmarks" / "bench.py"
#: conf/model/segdec_small.yaml, written out.
SMALL_NET = {"channels": (16, 32, 32), "volume_channels": 64, "volume_kernel": 7}
#: At --size 64x128 the paper network's volume is 8x16: its 15x15 convolution runs there.
ROWS = [
    "conv15x15/8x16/b1/fp32/peak",
    "conv15x15_train/8x16/b1/fp32/peak",
    "matmul/2048x2048/b1/fp32/peak",
    "segdec_small/64x128/b1/fp32/train",
    "segdec_small/64x128/b8/bf16/infer",
    "segdec_small/64x128/b8/data",
]
#: What benchmarks/README.md documents.
TOP_KEYS = {
    "device",
    "cpu",
    "peak_gflops_per_s",
    "torch",
    "threads",
    "python",
    "timing",
    "flops_per_image",
    "peak_mb",
    "rows",
}
ROW_KEYS = {
    "model",
    "input",
    "batch",
    "precision",
    "mode",
    "variant",
    "channels_last",
    "compiled",
    "volume_im2col",
    "flops_per_image",
    "images_per_s",
    "gflops_per_s",
    "of_peak",
    "peak_mb",
    "steps",
    "seconds",
}


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    command = [sys.executable, str(BENCH), "--quick", "--device", "cpu", "--size", "64x128"]
    command += ["--rows", *ROWS, "--json", str(out / "results.json")]
    command += ["--data-dir", str(out / "data")]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, capture_output=True, text=True, cwd=REPO, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout, json.loads((out / "results.json").read_text())


def test_records_have_the_documented_keys(quick_run):
    stdout, report = quick_run
    assert set(report) == TOP_KEYS
    assert report["device"].startswith("cpu") and report["torch"] == torch.__version__
    assert report["cpu"] == {"model": cpu_model(), "bf16_features": cpu_bf16_features()}
    rows = report["rows"]
    assert [(r["mode"], r["model"], r["batch"]) for r in rows] == [
        ("peak", "conv15x15", 1),
        ("peak", "conv15x15_train", 1),
        ("peak", "matmul", 1),
        ("train", "segdec_small", 1),
        ("infer", "segdec_small", 8),
        ("data", "segdec_small", 8),  # the demo's batch
    ]
    for record in rows:
        assert set(record) == ROW_KEYS
        assert record["images_per_s"] > 0 and record["steps"] == 1
    # One markdown table: header, separator, a line per record.
    table = [line for line in stdout.splitlines() if line.startswith("|")]
    assert len(table) == 2 + len(rows)
    assert "images/s" in table[0] and "GFLOP/s" in table[0] and "of peak" in table[0]


def test_gflops_is_flops_times_images_per_second(quick_run):
    conv, conv_train, matmul, train, infer, data = quick_run[1]["rows"]
    forward, backward = measured(SegDecNet(**SMALL_NET), 64, 128)
    assert train["flops_per_image"] == forward + backward
    assert infer["flops_per_image"] == forward
    # The paper network's volume convolution, 64 -> 1024, 15x15, on its 8x16 map at 64x128.
    assert conv["flops_per_image"] == 2 * 64 * 1024 * 15 * 15 * 8 * 16
    assert conv_train["flops_per_image"] == 3 * conv["flops_per_image"]
    assert matmul["flops_per_image"] == 2 * 2048**3
    for record in (conv, conv_train, matmul, train, infer):
        expected = record["flops_per_image"] * record["images_per_s"] / 1e9
        assert record["gflops_per_s"] == pytest.approx(expected, rel=1e-9)
    assert data["flops_per_image"] is None and data["gflops_per_s"] is None


def test_of_peak_divides_by_the_best_peak_row_of_the_same_precision(quick_run):
    report = quick_run[1]
    conv, conv_train, matmul, train, infer, data = report["rows"]
    best = max(r["gflops_per_s"] for r in (conv, conv_train, matmul))
    assert report["peak_gflops_per_s"] == {"fp32": best}
    for record in (conv, conv_train, matmul, train):
        assert record["of_peak"] == pytest.approx(record["gflops_per_s"] / best, rel=1e-9)
    assert max(r["of_peak"] for r in (conv, conv_train, matmul)) == 1.0
    # No bf16 peak row in this run, and no FLOPs on a data row: no share.
    assert infer["precision"] == "bf16" and infer["of_peak"] is None
    assert data["of_peak"] is None


def test_peak_shares_by_hand(bench):
    records = [
        {"mode": "peak", "precision": "fp32", "gflops_per_s": 100.0},
        {"mode": "peak", "precision": "fp32", "gflops_per_s": 250.0},
        {"mode": "peak", "precision": "bf16", "gflops_per_s": 400.0},
        {"mode": "train", "precision": "fp32", "gflops_per_s": 200.0},
        {"mode": "train", "precision": "bf16", "gflops_per_s": 100.0},
        {"mode": "peak", "precision": "bf16", "error": "killed"},
        {"mode": "data", "precision": "-", "gflops_per_s": None},
    ]
    assert bench.peaks(records) == {"fp32": 250.0, "bf16": 400.0}
    shares = [r["of_peak"] for r in bench.with_peak_shares(records)]
    assert shares == [0.4, 1.0, 1.0, 0.8, 0.25, None, None]


def test_peak_memory_is_measured_for_the_network_rows(quick_run):
    *peaks, train, infer, data = quick_run[1]["rows"]
    # The small network's weights and gradients alone are ~1.3 MB; its activations more.
    assert train["peak_mb"] > 1 and infer["peak_mb"] > 0
    assert all(r["peak_mb"] is None for r in peaks) and data["peak_mb"] is None


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("benchmarks_bench", BENCH)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def refusal(bench, capsys, *argv: str) -> str:
    with pytest.raises(SystemExit) as stop:
        bench.main(list(argv))
    result = subprocess.CompletedProcess(argv, stop.value.code, "", capsys.readouterr().err)
    return one_line_error(result)


@pytest.mark.parametrize(
    "argv,words",
    [
        (["--rows", "nope/*"], "no row matches nope/*"),
        (["--size", "100x128"], "--size 100x128: input height 100 is not divisible by 8"),
        (["--json", "."], "is a folder"),
        (["--no-eager"], "--no-eager leaves no network row"),
        # each a traceback at the first data row, after minutes of measuring
        (["--data-dir", str(REPO / "README.md")], "README.md is a file, not a folder"),
        (["--budget", "-5"], "--budget must be a number of seconds >= 0, not -5"),
    ],
)
def test_bad_arguments_are_refused(bench, capsys, argv, words):
    assert words in refusal(bench, capsys, "--device", "cpu", *argv)


def test_a_json_path_inside_a_file_is_refused_before_any_row(bench, monkeypatch, capsys, tmp_path):
    """It was a traceback when the first row's results were written, after it was measured."""
    monkeypatch.setattr(bench, "run_row", lambda *args, **kwargs: pytest.fail("a row was run"))
    (tmp_path / "notes").write_text("")
    target = tmp_path / "notes" / "results.json"
    words = refusal(bench, capsys, "--device", "cpu", "--rows", "peak/*", "--json", str(target))
    assert words == f"error: --json {target}: {tmp_path / 'notes'} is a file, not a folder"


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA device")
def test_cuda_without_a_gpu_is_refused(bench, capsys):
    assert "no CUDA device" in refusal(bench, capsys, "--device", "cuda")


def test_a_row_past_the_budget_is_not_run(bench):
    row = bench.Row("peak", "matmul", 8, 8, 1, "fp32", "torch.mm", 2 * 8**3)
    record = bench.run_row(row, "cpu", bench.Timing(), seconds=0.0)
    assert record["error"].startswith("not run: the time budget")
    assert "images_per_s" not in record


def test_compile_options_add_their_rows_after_the_eager_ones(bench):
    args = bench.parse_arguments(["--compile", "--cuda-graphs"])
    assert bench.variants(args) == [
        (False, False, None),
        (False, False, "default"),
        (False, False, "reduce-overhead"),
    ]
    names = [bench.variant_name(*triple) for triple in bench.variants(args)]
    assert names == ["eager", "compiled", "compiled reduce-overhead"]
    args = bench.parse_arguments(["--channels-last", "--compile", "--no-eager"])
    assert bench.variants(args) == [
        (False, False, "default"),
        (True, False, None),
        (True, False, "default"),
    ]
    args = bench.parse_arguments(["--volume-im2col", "--no-eager"])
    assert bench.variants(args) == [(False, True, None)]
    assert bench.variant_name(True, True, None) == "channels_last, volume im2col"


def test_a_quick_run_leaves_the_measured_results_alone(bench):
    """--quick checks that the script runs, with one step a row: its rows go elsewhere than
    the committed benchmarks/results.json that the docs quote, unless --json names a file."""
    assert bench.parse_arguments([]).json == bench.RESULTS
    assert bench.parse_arguments(["--quick"]).json == bench.QUICK_RESULTS != bench.RESULTS
    assert bench.parse_arguments(["--quick", "--json", "x.json"]).json.name == "x.json"


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["--steps", "0"], "error: --steps must be >= 1, not 0"),
        (["--batch", "0"], "error: --batch must be >= 1, not 0"),
        (["--model", "nosuch"], "error: --model nosuch: no such model (known: segdec, "),
        (["--size", "63x127"], "error: --size 63x127: input height 63 is not divisible by 8"),
        (["--json", "."], "error: --json . is a folder; name the file to write"),
        (
            ["--json", str(REPO / "README.md" / "x.json")],
            f"error: --json {REPO / 'README.md' / 'x.json'}: {REPO / 'README.md'} is a file",
        ),
    ],
)
def test_the_profile_refuses_what_cannot_run_in_one_line(monkeypatch, capsys, argv, expected):
    """Each was a traceback: at once, after the warm-up steps, or (--json) after all the
    profiling, losing its tables."""
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    import profile_step

    with pytest.raises(SystemExit) as stop:
        profile_step.parse_arguments(["--precision", "fp32", *argv])
    result = subprocess.CompletedProcess(argv, stop.value.code, "", capsys.readouterr().err)
    assert one_line_error(result).startswith(expected)


@pytest.mark.skipif(not os.path.isfile("/usr/bin/time"), reason="needs /usr/bin/time")
def test_the_quick_memory_check_trains_on_two_small_folders(tmp_path):
    """`make bench ARGS=--quick` passes --quick on: it ran the full-size memory check."""
    script = REPO / "benchmarks" / "memory_vs_dataset_size.py"
    command = [sys.executable, str(script), "--quick", "--workdir", str(tmp_path)]
    done = subprocess.run(command, capture_output=True, text=True, cwd=REPO, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    cells = [line.split("|")[1].strip() for line in done.stdout.splitlines() if line[:1] == "|"]
    rows = [cell for cell in cells if cell.isdigit()]
    assert rows == ["100", "400"], done.stdout
    assert "4 training batches, 2 validation and test batches" in done.stdout


MEMORY_CHECK = REPO / "benchmarks" / "memory_vs_dataset_size.py"


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["--interval", "-1"], "error: --interval must be a number of seconds > 0, not -1"),
        (["--sizes", "2", "8"], "error: --sizes must be at least 4 tiles each, not 2"),
        (["--workdir", str(REPO / "README.md")], "README.md is a file, not a folder"),
    ],
)
def test_the_memory_check_refuses_what_cannot_run_in_one_line(argv, expected):
    """Each was a traceback, --interval -1 once the training had started (left running)."""
    command = [sys.executable, str(MEMORY_CHECK), *argv]
    done = subprocess.run(command, capture_output=True, text=True, cwd=REPO, timeout=120)
    assert done.returncode == 2
    assert expected in one_line_error(done)


@pytest.mark.skipif(not os.path.isfile("/usr/bin/time"), reason="needs /usr/bin/time")
def test_a_terminated_memory_check_stops_its_training_and_removes_its_folder(tmp_path):
    """SIGTERM ended the check and left its training running, and its work folder behind."""
    command = [sys.executable, str(MEMORY_CHECK), "--quick"]
    env = {**os.environ, "TMPDIR": str(tmp_path)}  # its work folder goes there
    check = subprocess.Popen(command, cwd=REPO, env=env, stderr=subprocess.PIPE, text=True)
    try:
        while "training on 100 tiles" not in check.stderr.readline():
            assert check.poll() is None, "the check ended before its first training"
        training = None
        for _ in range(400):  # the training, started after the line above
            children = psutil.Process(check.pid).children(recursive=True)
            if any("crackseg-train" in " ".join(c.cmdline()) for c in children):
                training = children
                break
            time.sleep(0.05)
        assert training is not None
        check.send_signal(signal.SIGTERM)
        assert check.wait(timeout=60) == 128 + signal.SIGTERM
        psutil.wait_procs(training, timeout=10)
        assert not [p for p in training if p.is_running() and p.status() != "zombie"]
        assert not list(tmp_path.glob("crackseg-memory-*"))
    finally:
        check.kill()
        check.stderr.close()


def test_a_terminated_bench_stops_the_row_it_was_measuring(tmp_path):
    """SIGTERM ended the bench and left its row process running on, measuring for no one."""
    command = [sys.executable, str(BENCH), "--device", "cpu", "--min-seconds", "120"]
    command += ["--rows", "matmul/2048x2048/b1/fp32/peak", "--json", str(tmp_path / "r.json")]
    bench = subprocess.Popen(command, cwd=REPO, stderr=subprocess.PIPE, text=True)
    try:
        while "[1/1] matmul" not in bench.stderr.readline():  # (after any warning)
            assert bench.poll() is None, "the bench ended before its row"
        worker = None
        for _ in range(200):  # the row's process, started after the line above
            children = psutil.Process(bench.pid).children()
            if children and "--worker" in children[0].cmdline():  # (past its exec)
                worker = children[0]
                break
            time.sleep(0.05)
        assert worker is not None
        time.sleep(0.5)  # the bench waits on it (not still inside Popen, which cannot stop it)
        bench.send_signal(signal.SIGTERM)
        assert bench.wait(timeout=60) == 128 + signal.SIGTERM
        worker.wait(timeout=10)  # psutil.TimeoutExpired where it was left measuring
    finally:
        bench.kill()
        bench.stderr.close()


MEASURE_BENCH = REPO / "benchmarks" / "measure_cracks.py"


def test_the_quick_measurement_bench_prints_a_row_for_every_mask(tmp_path):
    """`benchmarks/measure_cracks.py --quick`: every kind of mask measured, its cracks
    counted (20 wavy cracks apart from each other, one region for a stain or a flood)."""
    (tmp_path / "masks").mkdir()  # no CrackForest masks: their row is left out
    command = [sys.executable, str(MEASURE_BENCH), "--quick", "--cfd", str(tmp_path)]
    done = subprocess.run(command, capture_output=True, text=True, cwd=REPO, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = {
        cells[1]: cells[3]
        for line in done.stdout.splitlines()
        if line.startswith("| ") and (cells := [c.strip() for c in line.split("|")])[3].isdigit()
    }
    assert rows == {"specks": "240", "20 wavy cracks": "20", "a stain": "1", "marked whole": "1"}
    assert "no CrackForest masks in" in done.stdout


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["--repeats", "0"], "error: --repeats must be >= 1, not 0"),
        (["--cfd", "no/such/folder"], "error: --cfd no/such/folder: no masks/ folder there"),
    ],
)
def test_the_measurement_bench_refuses_what_cannot_run_in_one_line(argv, expected):
    done = subprocess.run(
        [sys.executable, str(MEASURE_BENCH), *argv], capture_output=True, text=True, cwd=REPO
    )
    assert done.returncode == 2
    assert one_line_error(done) == expected
