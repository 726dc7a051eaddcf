"""notebooks/compare_runs.ipynb runs end to end on a tiny sweep and saves its figures."""

from __future__ import annotations

import shutil
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient
from test_sweeps import tiny_sweep_dir

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
    assert "2 jobs, 2 finished; swept: data.dilate" in text
    assert "0_data.dilate=3,seed=0: curves from history.json" in text
    assert "1_data.dilate=3,seed=1: curves from TensorBoard" in text
    for name in ("ablation_data.dilate.png", "training_curves.png"):
        figure = sweep / name
        assert figure.is_file() and figure.read_bytes()[:8] == PNG, name
