"""A mistake on the command line is refused before Lightning is imported, which takes
seconds of CPU (it loads torch._dynamo): the modules a refusal runs through import no
Lightning, and the entry points refuse common mistakes with Lightning never loaded. Told by
which modules were imported (``sys.modules``, Python's import log), never by the clock."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO, one_line_error, run_entry

from crackseg.atomic import atomic_write_png

#: Lightning's packages: neither is imported before a run really starts.
LIGHTNING = {"pytorch_lightning", "lightning_fabric"}
#: The modules every refusal of a command line runs through.
REFUSAL_PATH = (
    "crackseg.cli",
    "crackseg.error_lines",
    "crackseg.runs.lifecycle",
    "crackseg.runs.multirun",
    "crackseg.runs.ownership",
    "crackseg.runs.resume",
    "crackseg.runs.config_checks",
    "crackseg.predict",
    "crackseg.export",
)


def lightning_after_importing(*modules: str) -> set[str]:
    """Lightning's packages loaded in a fresh interpreter once ``modules`` are imported."""
    code = f"import sys, {', '.join(modules)}; print(*sorted(sys.modules))"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True
    )
    return LIGHTNING & set(result.stdout.split())


def imported_modules(stderr: str) -> set[str]:
    """The modules Python's import log (PYTHONPROFILEIMPORTTIME=1) names in ``stderr``."""
    return {
        line.rsplit("|", 1)[1].strip()
        for line in stderr.splitlines()
        if line.startswith("import time:")
    }


def test_the_refusal_path_imports_no_lightning():
    assert lightning_after_importing(*REFUSAL_PATH) == set()


def test_the_check_sees_lightning_where_a_run_starts():
    # The Trainer's module imports Lightning: the check above would see it.
    assert lightning_after_importing("crackseg.runs.trainer") == LIGHTNING


def test_the_import_log_names_each_module():
    log = (
        "import time: self [us] | cumulative | imported package\n"
        "import time:       453 |    2635546 |         lightning_fabric\n"
        "error: one line\n"
    )
    assert "lightning_fabric" in imported_modules(log)
    assert "error: one line" not in imported_modules(log)


@pytest.fixture
def photos(tmp_path) -> Path:
    folder = tmp_path / "photos"
    atomic_write_png(folder / "a.png", np.zeros((8, 8), np.uint8))
    return folder


@pytest.fixture
def finished_run(tmp_path) -> Path:
    folder = tmp_path / "finished"
    folder.mkdir()
    (folder / "status.json").write_text(json.dumps({"status": "finished"}))
    return folder


def refuse(entry: str, *overrides: str) -> tuple[str, set[str]]:
    """The one error line of a refused ``python -m crackseg.ENTRY``, and the Lightning
    packages it imported."""
    result = run_entry(entry, *overrides, timeout=120, env={"PYTHONPROFILEIMPORTTIME": "1"})
    return one_line_error(result), LIGHTNING & imported_modules(result.stderr)


def test_predict_refuses_a_missing_checkpoint_without_lightning(tmp_path, photos):
    missing = tmp_path / "none.ckpt"
    line, lightning = refuse(
        "predict", f"ckpt_path={missing}", f"input={photos}", f"hydra.run.dir={tmp_path / 'p'}"
    )
    assert line == f"error: checkpoint {missing} does not exist"
    assert lightning == set()
    status = json.loads((tmp_path / "p" / "status.json").read_text())
    assert status == {"status": "failed", "error": line.removeprefix("error: ")}


def test_a_run_folder_given_as_the_checkpoint_says_to_name_a_file(tmp_path, photos):
    line, lightning = refuse(
        "predict", f"ckpt_path={tmp_path}", f"input={photos}", f"hydra.run.dir={tmp_path / 'p'}"
    )
    assert line == (
        f"error: checkpoint {tmp_path} is a folder: name a .ckpt file (a run's are in checkpoints/)"
    )
    assert lightning == set()


def test_predict_refuses_a_used_folder_without_lightning(tmp_path, photos, finished_run):
    line, lightning = refuse(
        "predict", "ckpt_path=none.ckpt", f"input={photos}", f"hydra.run.dir={finished_run}"
    )
    assert line == f"error: {finished_run} already holds a run; choose another hydra.run.dir"
    assert lightning == set()
    assert json.loads((finished_run / "status.json").read_text()) == {"status": "finished"}


def test_export_refuses_a_missing_checkpoint_without_lightning(tmp_path):
    missing = tmp_path / "none.ckpt"
    line, lightning = refuse("export", f"ckpt_path={missing}", f"hydra.run.dir={tmp_path / 'e'}")
    assert line == f"error: checkpoint {missing} does not exist"
    assert lightning == set()


@pytest.mark.parametrize(
    ("entry", "given"),
    [("export", ()), ("eval", ()), ("export", ("ckpt_path=",)), ("eval", ("ckpt_path=null",))],
)
def test_a_command_without_its_checkpoint_says_what_to_give(tmp_path, entry, given):
    """Left out, empty or null: one line, recorded in the folder's status.json."""
    run_dir = tmp_path / "run"
    line, lightning = refuse(entry, *given, f"hydra.run.dir={run_dir}")
    assert line == "error: ckpt_path=PATH.ckpt is required"
    assert lightning == set()
    status = json.loads((run_dir / "status.json").read_text())
    assert status == {"status": "failed", "error": line.removeprefix("error: ")}


def test_hydra_refuses_an_unknown_config_without_lightning(tmp_path):
    line, lightning = refuse(
        "export", "paths=nope", "ckpt_path=x.ckpt", f"hydra.run.dir={tmp_path / 'e'}"
    )
    assert line == "error: In 'export': Could not find 'paths/nope' (available: default)"
    assert lightning == set()
    assert not (tmp_path / "e").exists()


def test_train_refuses_a_wrong_type_without_lightning(tmp_path):
    run_dir = tmp_path / "t"
    line, lightning = refuse("train", "trainer.max_epochs=ten", f"hydra.run.dir={run_dir}")
    assert line == "error: trainer.max_epochs must be an integer >= 1, not 'ten'"
    assert lightning == set()
    status = json.loads((run_dir / "status.json").read_text())
    assert status == {"status": "failed", "error": line.removeprefix("error: ")}


def test_a_count_of_extra_masks_without_their_ranking_is_refused(tmp_path):
    """It trained as if data.extra_segmented.count had not been typed."""
    run_dir = tmp_path / "t"
    count = "data.extra_segmented.count=5"
    line, lightning = refuse("train", "experiment=demo", count, f"hydra.run.dir={run_dir}")
    assert line.startswith("error: data.extra_segmented.count keeps the masks of the first")
    assert "set data.extra_segmented.ranking=PATH too" in line
    assert lightning == set()
    # a sweep over it: before any job (no job has the sweep's composed config's keys)
    sweep = tmp_path / "s"
    line, _ = refuse("train", "-m", "experiment=demo", f"{count},10", f"hydra.sweep.dir={sweep}")
    assert "set data.extra_segmented.ranking=PATH too" in line
    assert not sweep.exists()


@pytest.mark.parametrize("entry", ["train", "eval"])
def test_a_run_into_a_sweeps_folder_is_refused_writing_nothing(tmp_path, entry):
    """It ran there: its files beside the sweep's jobs, counted as one of them when the
    sweep ran again, and crackseg-summary refused the folder as one run's."""
    sweep = tmp_path / "sweep"
    (sweep / "0_seed=0").mkdir(parents=True)
    (sweep / "multirun.yaml").write_text("hydra: {}\n")
    before = sorted(p.name for p in sweep.iterdir())
    extra = ["ckpt_path=x.ckpt"] if entry == "eval" else []
    line, lightning = refuse(entry, *extra, f"hydra.run.dir={sweep}")
    assert line == (
        f"error: {sweep} holds a sweep (multirun.yaml); a run goes into a folder of its own: "
        "choose another hydra.run.dir"
    )
    assert sorted(p.name for p in sweep.iterdir()) == before and lightning == set()


def test_a_sweeps_folder_is_no_run_to_resume(tmp_path):
    sweep = tmp_path / "sweep"
    (sweep / ".hydra").mkdir(parents=True)  # a stray one (a run refused there, once)
    (sweep / ".hydra" / "config.yaml").write_text("seed: 0\n")
    (sweep / "multirun.yaml").write_text("hydra: {}\n")
    line, _ = refuse("train", f"resume={sweep}")
    assert line.startswith(f"error: resume={sweep} holds a sweep (multirun.yaml): run the")


def test_a_sweep_into_a_runs_folder_is_refused_before_any_job(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "status.json").write_text('{"status": "finished"}')
    line, _ = refuse("train", "-m", "experiment=demo", "seed=0,1", f"hydra.sweep.dir={run}")
    assert line == (
        f"error: {run} holds a run; a sweep goes into a folder of its own: choose another "
        "hydra.sweep.dir"
    )
    assert sorted(p.name for p in run.iterdir()) == ["status.json"]


def test_train_refuses_an_unknown_data_config_without_lightning(tmp_path):
    line, lightning = refuse("train", "data=nope", f"hydra.run.dir={tmp_path / 't'}")
    assert line.startswith("error: In 'train': Could not find 'data/nope' (available: ")
    assert lightning == set()


def test_train_refuses_a_resume_of_nothing_without_lightning(tmp_path):
    line, lightning = refuse("train", f"resume={tmp_path / 'nothere'}")
    assert line == f"error: resume={tmp_path / 'nothere'}: no such folder"
    assert lightning == set()


def test_train_refuses_an_empty_resume_without_lightning(tmp_path):
    """``resume=$RUN`` with RUN unset names no folder: not the current one; nor does a
    value Hydra typed (``resume=true``). The folder named is left without a lock file."""
    line, lightning = refuse("train", "resume=", f"hydra.run.dir={tmp_path / 'a'}")
    assert line == "error: resume= is empty: name the run folder (resume=RUN_DIR), or leave it out"
    assert lightning == set()
    line, _ = refuse("train", "resume=true", f"hydra.run.dir={tmp_path / 'b'}")
    assert line == "error: resume= takes a run folder (resume=RUN_DIR) or auto, not true"
    assert [list((tmp_path / name).iterdir()) for name in "ab"] == [[], []]


def test_train_and_eval_refuse_a_data_config_without_a_root_without_lightning(tmp_path):
    line, lightning = refuse("train", "data=crack_segmentation", f"hydra.run.dir={tmp_path / 't'}")
    assert (line, lightning) == ("error: data.root=PATH is required", set())
    line, lightning = refuse(
        "eval", "ckpt_path=x.ckpt", "data=folder", f"hydra.run.dir={tmp_path / 'e'}"
    )
    assert (line, lightning) == ("error: data.root=PATH is required", set())


@pytest.mark.parametrize("entry", ["train", "eval"])
def test_an_output_dir_other_than_the_run_folder_is_refused(tmp_path, entry):
    """The log and .hydra/ are in hydra.run.dir: results elsewhere would split the run."""
    elsewhere, run_dir = tmp_path / "elsewhere", tmp_path / "run"
    checkpoint = ["ckpt_path=x.ckpt"] if entry == "eval" else []
    line, _ = refuse(
        entry, *checkpoint, f"paths.output_dir={elsewhere}", f"hydra.run.dir={run_dir}"
    )
    assert line == (
        f"error: paths.output_dir={elsewhere} is not the run's folder {run_dir}: "
        "set hydra.run.dir (hydra.sweep.dir in a sweep) instead"
    )
    assert not elsewhere.exists()
    assert json.loads((run_dir / "status.json").read_text())["status"] == "failed"


@pytest.mark.parametrize("launcher", ["slurm", "local_parallel"])
def test_a_launcher_typed_for_a_single_run_is_refused(tmp_path, launcher):
    """Hydra launches only a sweep's jobs: the run would train here, not where it was sent."""
    line, lightning = refuse("train", f"hydra/launcher={launcher}", f"hydra.run.dir={tmp_path}")
    assert line == (
        f"error: hydra/launcher={launcher} launches the jobs of a sweep, and a single run "
        "would train here: add -m (--multirun), or drop it"
    )
    assert lightning == set()
    # the folder Hydra made for the run says why it failed (a sweep summary counts it so)
    status = json.loads((tmp_path / "status.json").read_text())
    assert (status["status"], "error: " + status["error"]) == ("failed", line)


def test_a_device_this_machine_lacks_is_recorded_as_the_failure_of_its_new_run(tmp_path):
    """Refused before the run accepted its folder (the machine's settings are made concrete
    first): the folder Hydra made for it says why, as for any other refused setting, not a
    bare .hydra/ that a sweep summary counts as a run still going."""
    run_dir = tmp_path / "run"
    line, _ = refuse("train", "trainer.accelerator=mps", f"hydra.run.dir={run_dir}")
    assert line == "error: trainer.accelerator=mps, but this machine has no MPS device"
    status = json.loads((run_dir / "status.json").read_text())
    assert status == {"status": "failed", "error": line.removeprefix("error: ")}


def test_a_sweep_typed_for_a_single_run_is_refused(tmp_path):
    """+sweep=dilate without -m: Hydra's basic sweeper is not called, and the run would train
    one job of the defaults, the sweep's values ignored."""
    line, lightning = refuse("train", "+sweep=dilate", f"hydra.run.dir={tmp_path}")
    assert line == (
        "error: the config sweeps over data.dilate, seed (hydra.sweeper.params), which a "
        "single run ignores: add -m (--multirun)"
    )
    assert lightning == set()
    assert json.loads((tmp_path / "status.json").read_text())["status"] == "failed"


def test_the_run_folder_written_another_way_is_the_run_folder(tmp_path):
    """``..`` or a link to it: the same folder, not refused as another one."""
    (tmp_path / "sub").mkdir()
    (tmp_path / "link").symlink_to(tmp_path)
    run_dir = tmp_path / "sub" / ".." / "run"
    same = tmp_path / "link" / "run"
    result = run_entry("eval", f"hydra.run.dir={run_dir}", f"paths.output_dir={same}", timeout=120)
    assert "is not the run's folder" not in result.stderr + result.stdout
    assert one_line_error(result) == "error: ckpt_path=PATH.ckpt is required"


def test_train_into_an_evaluation_folder_is_not_told_to_resume_it(tmp_path):
    folder = tmp_path / "evaluated"
    (folder / ".hydra").mkdir(parents=True)
    (folder / ".hydra" / "hydra.yaml").write_text("hydra:\n  job:\n    name: eval\n")
    (folder / "status.json").write_text('{"status": "finished"}')
    line, _ = refuse("train", f"hydra.run.dir={folder}")
    assert line == f"error: {folder} holds a crackseg-eval run; choose another hydra.run.dir"


def test_train_refuses_a_finished_run_folder_without_lightning(finished_run):
    line, lightning = refuse("train", f"hydra.run.dir={finished_run}")
    # not told to resume it: a finished run is never resumed
    assert line == f"error: {finished_run} holds a run that finished; choose another hydra.run.dir"
    assert lightning == set()


def test_eval_refuses_a_missing_checkpoint_without_lightning(tmp_path):
    missing = tmp_path / "none.ckpt"
    line, lightning = refuse("eval", f"ckpt_path={missing}", f"hydra.run.dir={tmp_path / 'v'}")
    assert line == f"error: checkpoint {missing} does not exist"
    assert lightning == set()


def test_eval_refuses_model_and_training_settings_which_the_checkpoint_decides(tmp_path):
    """They would change nothing but the config the evaluation records (an experiment's
    model is its own, not typed)."""
    model = "evaluates the network the checkpoint holds and takes no model settings"
    # nor training settings, which were taken without a word (an experiment's, not typed)
    training = "evaluates the weights as they were trained and reads no training settings"
    cases = {
        "model": (["model=segdec_fullres"], model),
        "model.net.volume_channels": (["experiment=demo", "model.net.volume_channels=8"], model),
        "loss.delta_cls": (["experiment=cfd_tiles", "loss.delta_cls=0.5"], training),
        "trainer.max_epochs": (["trainer.max_epochs=3"], training),
    }
    for named, (typed, why) in cases.items():
        run_dir = f"hydra.run.dir={tmp_path / named}"
        line, lightning = refuse("eval", "ckpt_path=a.ckpt", *typed, run_dir)
        assert line == f"error: {named}: crackseg-eval {why}; leave them out"
        assert lightning == set()
    # a Severstal size the paper gives no epochs for is no evaluation's concern (its error
    # named trainer.max_epochs, refused above)
    missing = tmp_path / "none.ckpt"
    severstal = ("experiment=paper/severstal", "data.train_positives=null", f"data.root={tmp_path}")
    line, _ = refuse("eval", f"ckpt_path={missing}", *severstal, f"hydra.run.dir={tmp_path / 's'}")
    assert line == f"error: checkpoint {missing} does not exist"


def test_a_folder_of_a_refused_command_is_the_same_commands_to_retry(tmp_path, photos):
    """A retry after a typo, into the same folder: the same command may take it (the
    refusal left only its record); another command is refused, naming the failure, so the
    folder stays the refused command's to retry."""
    run_dir = tmp_path / "p"
    typed = ("ckpt_path=none.ckpt", f"input={photos}", f"hydra.run.dir={run_dir}")
    first, _ = refuse("predict", *typed, "overlap=0.9")
    assert first.startswith("error: overlap must be a number in [0, 0.75]")
    line, lightning = refuse("predict", *typed)
    assert line == "error: checkpoint none.ckpt does not exist"  # the folder was taken
    assert lightning == set()
    # its record is the retry's, not the refused command's
    assert "overlap" not in (run_dir / ".hydra" / "overrides.yaml").read_text()
    line, _ = refuse("export", "ckpt_path=none.ckpt", f"hydra.run.dir={run_dir}")
    assert line == (
        f"error: {run_dir} already holds a command that failed (checkpoint none.ckpt does not "
        "exist); choose another hydra.run.dir"
    )


def test_resuming_the_folder_of_another_command_is_refused_and_leaves_it_be(tmp_path):
    """An evaluation stopped by Ctrl-C has nothing to resume: crackseg-train resume= on its
    folder is refused, and writes nothing there."""
    folder = tmp_path / "evaluated"
    (folder / ".hydra").mkdir(parents=True)
    (folder / ".hydra" / "config.yaml").write_text("ckpt_path: x.ckpt\n")
    (folder / ".hydra" / "hydra.yaml").write_text("hydra:\n  job:\n    name: eval\n")
    (folder / "status.json").write_text(json.dumps({"status": "interrupted"}))
    before = sorted(p.name for p in folder.rglob("*"))
    line, lightning = refuse("train", f"resume={folder}")
    assert line == (
        f"error: resume={folder} holds a crackseg-eval run, not a training: nothing to resume"
    )
    assert lightning == set()
    assert sorted(p.name for p in folder.rglob("*")) == before


def test_resuming_into_another_folder_is_refused_and_leaves_nothing_there(tmp_path):
    """resume=RUN_DIR with a hydra.run.dir of its own: refused, and the folder named holds
    no lock file afterwards (the refusal locked it first)."""
    run_dir = tmp_path / "run"
    (run_dir / ".hydra").mkdir(parents=True)
    (run_dir / ".hydra" / "config.yaml").write_text("seed: 0\n")
    (run_dir / ".hydra" / "hydra.yaml").write_text("hydra:\n  job:\n    name: train\n")
    (run_dir / "status.json").write_text(json.dumps({"status": "interrupted"}))
    other = tmp_path / "other"
    line, _ = refuse("train", f"resume={run_dir}", f"hydra.run.dir={other}")
    assert line == f"error: resume={run_dir} but the run folder is {other}: drop hydra.run.dir"
    assert list(other.iterdir()) == []


def test_a_run_started_with_a_config_of_its_own_is_a_training_to_resume(tmp_path):
    """``crackseg-train --config-dir DIR --config-name my_train``: Hydra records the config
    name my_train and the job name train; the folder holds a training (it was once refused
    as a crackseg-my_train run)."""
    from crackseg.runs.hydra_run import started_by
    from crackseg.runs.resume import check_resume_folder

    folder = tmp_path / "run"
    (folder / ".hydra").mkdir(parents=True)
    (folder / ".hydra" / "config.yaml").write_text("seed: 0\n")
    (folder / ".hydra" / "hydra.yaml").write_text(
        "hydra:\n  job:\n    name: train\n    config_name: my_train\n"
    )
    assert started_by(folder) == "train"
    check_resume_folder(folder)  # no refusal


def test_a_sweep_asked_for_its_config_is_one_line(tmp_path):
    line, lightning = refuse("train", "-m", "+sweep=dilate", "--cfg", "job")
    assert line.startswith("error: Only one of --run, --multirun, --cfg")
    assert line.endswith("(--cfg shows the config of one run: drop -m)")
    assert lightning == set()


def test_a_sweep_over_checkpoints_is_not_refused_for_the_checkpoint_it_sweeps(tmp_path):
    """Hydra leaves a swept key out of the sweep's own config (``???`` there): each job
    checks its own, here a checkpoint that does not exist."""
    sweep_dir = tmp_path / "sweep"
    result = run_entry(
        "eval", "-m", "ckpt_path=a.ckpt,b.ckpt", f"hydra.sweep.dir={sweep_dir}", timeout=120
    )
    assert result.returncode == 1, result.stderr[-3000:]
    errors = sorted(
        json.loads(status.read_text())["error"] for status in sweep_dir.glob("*/status.json")
    )
    assert errors == ["checkpoint a.ckpt does not exist", "checkpoint b.ckpt does not exist"]
    # run again into its folder: its failed jobs are not run again there, which is said
    # before any job runs (it was said when job 0's turn came, ending the sweep there)
    summary = (sweep_dir / "summary.md").read_text()
    line = one_line_error(
        run_entry("eval", "-m", "ckpt_path=a.ckpt,b.ckpt", f"hydra.sweep.dir={sweep_dir}")
    )
    assert line.startswith(f"error: the job in {sweep_dir / '0_ckpt_path=a.ckpt'} did not ")
    assert "earlier run of this sweep (failed), and crackseg-eval runs no job again" in line
    assert (sweep_dir / "summary.md").read_text() == summary
    # a grid without those jobs runs beside them (here its job fails as theirs did)
    other = run_entry("eval", "-m", "ckpt_path=c.ckpt", f"hydra.sweep.dir={sweep_dir}")
    assert other.returncode == 1 and "did not finish in an earlier run" not in other.stderr
    assert (sweep_dir / "0_ckpt_path=c.ckpt" / "status.json").is_file()


@pytest.mark.parametrize("entry", ["predict", "export"])
def test_help_of_predict_and_export_lists_their_settings_not_the_training_groups(entry):
    result = run_entry(entry, "--help", timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    usage = {"predict": "ckpt_path=PATH input=IMAGE_OR_FOLDER", "export": "ckpt_path=PATH"}
    assert result.stdout.startswith(f"crackseg-{entry} {usage[entry]} [")  # how it is called
    assert "Its settings, with their defaults (??? must be given)" in result.stdout
    assert "ckpt_path:" in result.stdout
    assert "Configuration groups" not in result.stdout and "trainer:" not in result.stdout
