"""A sweep's job folders are one path component each, right under the sweep folder, whatever
the swept values; the resolved config prints without a job to give it a folder."""

from __future__ import annotations

from pathlib import Path

from conftest import run_entry
from omegaconf import OmegaConf

from crackseg.runs.job_folders import MAX_DIRNAME_BYTES, job_dirname, job_folder
from crackseg.runs.resolvers import hydra_subdir, job_log


def _is_job_folder_of(sweep: Path, name: str) -> bool:
    """Whether ``name`` is one folder right under ``sweep``, neither hidden nor ``..``."""
    folder = sweep / name
    return folder.parent == sweep and len(Path(name).parts) == 1 and not name.startswith(".")


def test_a_path_value_names_one_folder_under_the_sweep(tmp_path: Path) -> None:
    for value in ("/a/b/last.ckpt", "../../../escaped.ckpt", "./x", "..", "a/../../b"):
        name = job_folder(0, f"ckpt_path={value}")
        assert _is_job_folder_of(tmp_path, name), name
    assert job_folder(0, "ckpt_path=/a/b/last.ckpt") == "0_ckpt_path=_a_b_last.ckpt"
    assert job_folder(1, "model/backbone=x,seed=0") == "1_model_backbone=x,seed=0"  # a group


def test_names_without_a_slash_are_kept() -> None:
    for name in ("data.dilate=5,seed=0", "ckpt_path=last.ckpt", "lr=0.1,x='a b'"):
        assert job_dirname(name) == name
    assert job_folder(3, "data.dilate=5,seed=0") == "3_data.dilate=5,seed=0"


def test_a_long_path_value_is_shortened_to_one_component() -> None:
    long = "ckpt_path=" + "/".join(f"folder{i}" for i in range(60)) + "/last.ckpt"
    name = job_dirname(long)
    assert len(name.encode()) == MAX_DIRNAME_BYTES
    assert "/" not in name
    assert name != job_dirname(long.replace("/", "_"))  # the hash is of the value as given


def test_a_sweep_run_again_finds_the_folder_of_a_path_value(tmp_path: Path) -> None:
    folder = tmp_path / "0_ckpt_path=_a_b_last.ckpt"
    (folder / ".hydra").mkdir(parents=True)
    OmegaConf.save(OmegaConf.create(["ckpt_path=/a/b/last.ckpt"]), folder / ".hydra/overrides.yaml")
    job = ["ckpt_path=/a/b/last.ckpt"]
    assert job_folder(4, "ckpt_path=/a/b/last.ckpt", str(tmp_path), job) == folder.name
    other = ["ckpt_path=_a_b_last.ckpt"]  # the same name, another value: not that folder
    assert job_folder(5, "ckpt_path=_a_b_last.ckpt", str(tmp_path), other) == (
        "5_ckpt_path=_a_b_last.ckpt"
    )


def test_a_sweep_over_a_key_left_out_of_names_finds_its_folders_again(tmp_path: Path) -> None:
    """``experiment`` is left out of folder names: its jobs are ``0``, ``1``. Run again
    reordered, or narrowed to one, each job takes the folder of its own experiment."""
    for number, experiment in enumerate(("weakly_supervised", "mixed_supervision")):
        folder = tmp_path / str(number)
        (folder / ".hydra").mkdir(parents=True)
        saved = OmegaConf.create([f"experiment={experiment}"])
        OmegaConf.save(saved, folder / ".hydra/overrides.yaml")
    assert job_folder(0, "", str(tmp_path), ["experiment=mixed_supervision"]) == "1"
    assert job_folder(1, "", str(tmp_path), ["experiment=weakly_supervised"]) == "0"
    assert job_folder(2, "", str(tmp_path), ["experiment=cfd_tiles"]) == "2"


def test_a_sweep_over_checkpoint_paths_makes_flat_job_folders(tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    paths = "/a/b/last.ckpt,../../../escaped.ckpt"
    result = run_entry("eval", "-m", f"ckpt_path={paths}", f"hydra.sweep.dir={sweep}")
    assert result.returncode != 0  # neither checkpoint exists: both jobs fail at once
    assert [p.name for p in tmp_path.iterdir()] == ["sweep"]  # nothing outside the sweep
    jobs = sorted(p.name for p in sweep.iterdir() if p.is_dir())
    assert jobs == ["0_ckpt_path=_a_b_last.ckpt", "1_ckpt_path=.._.._.._escaped.ckpt"]
    for job in jobs:
        assert (sweep / job / ".hydra" / "overrides.yaml").is_file()  # the job ran there


def test_resolvers_claim_nothing_without_a_job_folder() -> None:
    assert job_log(None, "train") == "train.log"
    assert hydra_subdir(None, None, "train") == ".hydra"
    assert hydra_subdir(None, None, "eval") == ".hydra"


def test_the_resolved_config_prints_and_creates_nothing(tmp_path: Path) -> None:
    result = run_entry("train", "--cfg", "all", "--resolve", f"paths.log_dir={tmp_path}")
    assert result.returncode == 0, result.stderr
    printed = OmegaConf.create(result.stdout)
    assert printed.hydra.job_logging.handlers.file.filename == "train.log"
    assert printed.hydra.output_subdir == ".hydra"
    assert printed.hydra.run.dir.startswith(f"{tmp_path}/runs/")
    assert list(tmp_path.iterdir()) == []  # no run folder, no lock file
