"""benchmarks/bench.py: one quick run on a tiny input, its records and their GFLOP/s."""

import importlib.util
import json
import os
import subprocess
import sys

import pytest
import torch
from conftest import REPO, one_line_error
from test_flops import measured

from crackseg.models.segdecnet import SegDecNet

BENCH = REPO / "benchmarks" / "bench.py"
#: conf/model/segdec_small.yaml, written out.
SMALL_NET = {"channels": (16, 32, 32), "volume_channels": 64, "volume_kernel": 7}
ROWS = [
    "conv1x1/80x29/b1/fp32/peak",
    "segdec_small/64x128/b1/fp32/train",
    "segdec_small/64x128/b8/bf16/infer",
    "segdec_small/64x128/b8/data",
]
#: What benchmarks/README.md documents.
TOP_KEYS = {"device", "torch", "threads", "python", "timing", "flops_per_image", "peak_mb", "rows"}
ROW_KEYS = {
    "model",
    "input",
    "batch",
    "precision",
    "mode",
    "variant",
    "channels_last",
    "compiled",
    "flops_per_image",
    "images_per_s",
    "gflops_per_s",
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
    rows = report["rows"]
    assert [(r["mode"], r["model"], r["batch"]) for r in rows] == [
        ("peak", "conv1x1", 1),
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
    assert "images/s" in table[0] and "GFLOP/s" in table[0]


def test_gflops_is_flops_times_images_per_second(quick_run):
    peak, train, infer, data = quick_run[1]["rows"]
    forward, backward = measured(SegDecNet(**SMALL_NET), 64, 128)
    assert train["flops_per_image"] == forward + backward
    assert infer["flops_per_image"] == forward
    assert peak["flops_per_image"] == 2 * 1024 * 1024 * 80 * 29
    for record in (peak, train, infer):
        expected = record["flops_per_image"] * record["images_per_s"] / 1e9
        assert record["gflops_per_s"] == pytest.approx(expected, rel=1e-9)
    assert data["flops_per_image"] is None and data["gflops_per_s"] is None


def test_peak_memory_is_measured_for_the_network_rows(quick_run):
    peak, train, infer, data = quick_run[1]["rows"]
    # The small network's weights and gradients alone are ~1.3 MB; its activations more.
    assert train["peak_mb"] > 1 and infer["peak_mb"] > 0
    assert peak["peak_mb"] is None and data["peak_mb"] is None


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
        (["--size", "100x128"], "not divisible by 8"),
        (["--json", "."], "is a folder"),
    ],
)
def test_bad_arguments_are_refused(bench, capsys, argv, words):
    assert words in refusal(bench, capsys, "--device", "cpu", *argv)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA device")
def test_cuda_without_a_gpu_is_refused(bench, capsys):
    assert "no CUDA device" in refusal(bench, capsys, "--device", "cuda")
