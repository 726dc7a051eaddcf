"""notebooks/compare_runs.ipynb runs end to end on a tiny sweep and saves its figures."""

from __future__ import annotations

import json
import os
import shutil
import statistics
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient
from test_sweeps import tiny_sweep_dir

#: The tiny sweep's two jobs.
JOBS = ("0_data.dilate=3,seed=0", "1_data.dilate=3,seed=1")
NOTEBOOK = Path(__file__).resolve().parent.parent / "notebooks" / "compare_runs.ipynb"
PNG = b"\x89PNG\r\n\x1a\n"


def test_committed_notebook_has_no_outputs() -> None:
    nb = nbformat.read(NOTEBOOK, as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None


def test_notebook_compares_the_runs_of_a_sweep(
    tmp_path_factory: pytest.TempPathFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without CRACKSEG_SWEEP_DIR, on the newest multirun under outputs/ that holds jobs: a
    DDP sweep's other processes leave a newer one with their logs alone."""
    multiruns = tmp_path / "outputs" / "multiruns" / "train"
    sweep = multiruns / "2026-01-01_10-00-00"
    shutil.copytree(
        tiny_sweep_dir(tmp_path_factory), sweep, ignore=shutil.ignore_patterns("checkpoints")
    )
    # one job with TensorBoard events only: the curves must come from the event files
    (sweep / "1_data.dilate=3,seed=1" / "history.json").unlink()
    # seed 0 run twice (the grid changed between runs of the sweep): its mean counts it once
    first, again = sweep / "0_data.dilate=3,seed=0", sweep / "2_data.dilate=3,seed=0"
    shutil.copytree(first, again)
    metrics = json.loads((again / "metrics.json").read_text())
    (again / "metrics.json").write_text(json.dumps({**metrics, "image_ap": 0.0}))
    (sweep / "summary.csv").unlink()  # the notebook writes it again, with the repeat
    (multiruns / "2026-01-01_10-00-01" / "0_seed=0").mkdir(parents=True)
    shutil.copy(sweep / "multirun.yaml", multiruns / "2026-01-01_10-00-01")
    (tmp_path / "notebooks").mkdir()
    monkeypatch.delenv("CRACKSEG_SWEEP_DIR", raising=False)
    monkeypatch.setenv("MPLBACKEND", "Agg")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    client = NotebookClient(
        nb,
        timeout=180,
        kernel_name="python3",
        resources={"metadata": {"path": str(tmp_path / "notebooks")}},
    )
    client.execute()

    text = "".join(
        out.get("text", "") for cell in nb.cells if cell.cell_type == "code" for out in cell.outputs
    )
    assert "3 jobs, 3 finished; swept: data.dilate" in text
    assert f"{again.name} ran the setting and seed of {first.name} too: counted once" in text
    ap = [json.loads((sweep / j / "metrics.json").read_text())["image_ap"] for j in JOBS]
    assert f"data.dilate=3: image_ap {statistics.mean(ap):.4f}, " in text
    assert "(mean over 2 seeds)" in text
    assert "0_data.dilate=3,seed=0: curves from history.json" in text
    assert "1_data.dilate=3,seed=1: curves from TensorBoard" in text
    for name in ("ablation_data.dilate.png", "training_curves.png"):
        figure = sweep / name
        assert figure.is_file() and figure.read_bytes()[:8] == PNG, name


def test_the_sweep_to_compare_is_found_from_the_notebooks_folder_or_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from crackseg.sweep.summary import sweep_to_compare

    project, notebooks = tmp_path / "project", tmp_path / "project" / "notebooks"
    sweep = project / "outputs" / "multiruns" / "train" / "2026-01-01_10-00-00"
    (sweep / "0_seed=0" / ".hydra").mkdir(parents=True)
    (sweep / "multirun.yaml").write_text("{}\n")
    notebooks.mkdir()
    monkeypatch.chdir(notebooks)  # where Jupyter starts the notebook's kernel
    given = "outputs/multiruns/train/2026-01-01_10-00-00"  # as the commands name it
    assert sweep_to_compare(given, Path("..")).resolve() == sweep
    assert sweep_to_compare("", Path("..")).resolve() == sweep
    with pytest.raises(FileNotFoundError, match=r"^CRACKSEG_SWEEP_DIR=outputs/gone: no such"):
        sweep_to_compare("outputs/gone", Path(".."))
    with pytest.raises(FileNotFoundError, match=r"no job of a sweep in"):
        sweep_to_compare(str(notebooks), Path(".."))
    with pytest.raises(FileNotFoundError, match=r"no multirun under"):
        sweep_to_compare("", notebooks)
    # one run's folder: the notebook's training_curves.png would overwrite the run's own
    with pytest.raises(ValueError, match=r"=outputs/.*/0_seed=0 is one run's folder, not a"):
        sweep_to_compare(f"{given}/0_seed=0", Path(".."))
    # the sweep launched last, not the one whose summary was written last
    older = sweep.with_name("2025-12-31_10-00-00")
    (older / "0_seed=0" / ".hydra").mkdir(parents=True)
    (older / "multirun.yaml").write_text("{}\n")
    os.utime(older / "multirun.yaml", (1e9, 1e9))
    (older / "summary.csv").write_text("job\n")  # the folder's own time is now the newest
    assert sweep_to_compare("", Path("..")).resolve() == sweep
    (older / "summary.csv").unlink()
    assert sorted(p.name for p in tmp_path.rglob("*") if p.is_file()) == ["multirun.yaml"] * 2
