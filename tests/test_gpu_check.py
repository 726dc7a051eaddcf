"""benchmarks/gpu_check.py (`make gpu-check`) at toy size on the CPU, so that it cannot rot."""

import json
import os
import subprocess
import sys

import pytest
from conftest import REPO

GPU_CHECK = REPO / "benchmarks" / "gpu_check.py"
STEPS = ["gpu tests", "bench eager", "ddp", "seed epoch", "bench compiled"]
#: Toy sizes on the CPU, whatever the machine has (--toy too, for a machine with a GPU).
CPU_ONLY = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}


def gpu_check(tmp_path, *argv: str) -> subprocess.CompletedProcess:
    command = [sys.executable, str(GPU_CHECK), "--json", str(tmp_path / "results-gpu.json")]
    command += ["--work-dir", str(tmp_path / "work"), "--toy", *argv]
    return subprocess.run(
        command, capture_output=True, text=True, cwd=REPO, env=CPU_ONLY, timeout=400
    )


@pytest.fixture(scope="module")
def toy_run(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("gpu_check")
    done = gpu_check(tmp_path)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return tmp_path, json.loads((tmp_path / "results-gpu.json").read_text())


def test_every_step_runs_at_toy_size_on_the_cpu(toy_run):
    tmp_path, report = toy_run
    assert report["toy"] is True and report["device"].startswith("cpu")
    assert [s["step"] for s in report["steps"]] == STEPS
    assert all(s["status"] == "passed" for s in report["steps"]), report["steps"]
    assert report["seconds"] <= report["budget_s"] == 480


def test_bench_rows_cover_both_precisions_and_every_variant(toy_run):
    rows = toy_run[1]["bench"]["rows"]
    peaks = {(r["model"], r["precision"]) for r in rows if r["mode"] == "peak"}
    assert peaks == {("conv15x15", "fp32"), ("conv15x15", "bf16")}
    train = {
        (r["precision"], r["batch"], r["channels_last"], r["compiled"])
        for r in rows
        if r["mode"] == "train"
    }
    eager = {(p, 1, layout, None) for p in ("fp32", "bf16") for layout in (False, True)}
    compiled = {(p, 1, False, m) for p in ("fp32", "bf16") for m in ("default", "reduce-overhead")}
    assert train == eager | compiled
    assert all("error" not in r for r in rows)
    # The network at 64x128, its volume convolution on the 8x16 map of that input.
    assert {r["input"] for r in rows} == {"64x128", "8x16"}
    # "of peak" across both bench steps: the compiled rows against the first step's peaks.
    best = toy_run[1]["bench"]["peak_gflops_per_s"]
    for r in rows:
        assert r["of_peak"] == pytest.approx(r["gflops_per_s"] / best[r["precision"]])


def test_ddp_ran_two_processes_and_the_epoch_tested_its_weights(toy_run):
    tmp_path, report = toy_run
    ddp, epoch = report["steps"][2], report["steps"][3]
    assert ddp["devices"] == 2 and "2 CPU processes" in ddp["detail"]
    work = min((tmp_path / "work").iterdir())  # the check's own folder under --work-dir
    assert (work / "ddp" / "train_ddp_process_1.log").is_file()
    for step in (ddp, epoch):
        metrics = step["metrics"]
        assert metrics["train_samples"] > 0 and metrics["test_samples"] > 0
        assert 0 <= metrics["image_auc"] <= 1
    # The seed run's experiment: its network at the toy input size, 8+8 images.
    config = (work / "epoch" / ".hydra" / "config.yaml").read_text()
    assert "seed_crack_segmentation" in config and "input_height: 64" in config
    # as a user's run: the model summary, with the FLOPs its pass through the network counts
    log = (work / "logs" / "seed-epoch.log").read_text()
    assert "Total params" in log and "Total FLOPs" in log, log[-2000:]


def test_a_spent_budget_skips_the_steps_and_fails(tmp_path, toy_run):
    """Into the --work-dir of a check that ran: its rows and runs were read as this one's
    (or its runs' folders refused), so a skipped step reported another check's numbers."""
    work = ["--work-dir", str(toy_run[0] / "work")]
    done = gpu_check(tmp_path, "--budget", "1", *work)
    assert done.returncode == 1
    assert "error: gpu-check incomplete: gpu tests, bench eager" in done.stderr
    report = json.loads((tmp_path / "results-gpu.json").read_text())
    assert [s["status"] for s in report["steps"]] == ["skipped"] * len(STEPS)
    assert report["bench"]["rows"] == []


def test_a_bench_step_the_budget_cuts_short_keeps_its_rows_and_passes(tmp_path, monkeypatch):
    """The compiled rows get what the budget leaves: running out of it is no failure once a
    row was measured; with none measured the compiled path is not proven, and for the eager
    rows (the peaks every "of peak" divides by) running out is a failure."""
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    import gpu_check

    rows = tmp_path / "bench.json"
    command = [sys.executable, str(gpu_check.BENCH), "--device", "cpu", "--quick"]
    command += ["--json", str(rows), "--rows", "conv15x15/*/fp32/peak", "--budget", "0"]
    clock = gpu_check.Clock(60)
    step = gpu_check.run_step("bench compiled", command, clock, tmp_path, may_run_out=True)
    assert step["status"] == "budget", step
    gpu_check.bench_detail(step, rows)
    assert step["status"] == "failed", step
    assert step["detail"] == "0 of 1 rows measured; the time budget stopped the others"
    (row,) = json.loads(rows.read_text())["rows"]
    assert row["cut_by_budget"] and row["error"].startswith("not run: the time budget")
    assert gpu_check.run_step("bench eager", command, clock, tmp_path)["status"] == "failed"

    measured = {"model": "segdec", "images_per_s": 1.0}
    rows.write_text(json.dumps({"rows": [measured, row]}))
    step = {"status": "budget", "detail": ""}
    gpu_check.bench_detail(step, rows)
    assert step == {
        "status": "budget",
        "detail": "1 of 2 rows measured; the time budget stopped the others",
    }


def test_an_nvidia_gpu_torch_cannot_use_is_an_error_not_a_toy_pass(tmp_path, monkeypatch, capsys):
    """A CPU build of torch on a GPU machine would otherwise pass at toy size on the CPU."""
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    import gpu_check

    monkeypatch.setattr(gpu_check.torch.version, "cuda", None)
    monkeypatch.setattr(gpu_check, "nvidia_gpus_present", lambda: True)
    assert gpu_check.main(["--json", str(tmp_path / "r.json")]) == 2
    error = capsys.readouterr().err
    assert error.startswith("error: this machine has an NVIDIA GPU, but torch")
    assert "is a CPU build" in error
    assert "install a CUDA build of torch" in error and not (tmp_path / "r.json").exists()


def test_a_work_dir_that_is_a_file_is_refused_in_one_line(tmp_path):
    """It was a traceback (FileExistsError)."""
    (tmp_path / "notes").write_text("")
    done = gpu_check(tmp_path, "--work-dir", str(tmp_path / "notes"), "--budget", "5")
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1] == (
        f"error: --work-dir {tmp_path / 'notes'} is a file, not a folder"
    )


def test_on_a_gpu_a_skipped_gpu_test_fails_its_step(monkeypatch, tmp_path):
    """Counted from pytest's JUnit report: here, without a GPU, the GPU tests skip."""
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    import gpu_check

    clock = gpu_check.Clock(120)
    tests = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_gpu.py"]
    for selected, status in (("run_if_names", "passed"), ("on_cuda", "failed")):
        junit_xml = tmp_path / f"{selected}.xml"
        command = [*tests, "-k", selected, f"--junitxml={junit_xml}"]
        step = gpu_check.run_step("gpu tests", command, clock, tmp_path)
        assert step["status"] == "passed", step
        gpu_check.require_every_test_ran(step, junit_xml)
        assert step["status"] == status, step
    assert "every GPU test must run" in step["detail"]
    unread = {"status": "passed", "detail": "3 passed"}
    gpu_check.require_every_test_ran(unread, tmp_path / "none.xml")
    assert unread["status"] == "failed" and "no readable test report" in unread["detail"]
