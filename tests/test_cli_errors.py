"""A mistake on the command line is one ``error:`` line that keeps what the user needs to
mend it: Hydra's advice on the lines after its first (``+sweep=dilate``, ``--multirun``),
every option of a config group (those in its subfolders too); ``crackseg-summary``'s
argparse mistakes are one line too; ``crackseg-eval --help`` lists the groups eval takes.
No training: each command is refused, or answers, before a run starts."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO, one_line_error, run_entry

import crackseg
from crackseg import version_line
from crackseg.sweep.summary import main as summary_main

#: The config groups crackseg-eval takes (the network comes from the checkpoint).
EVAL_GROUPS = ("data", "experiment", "logger", "paths", "trainer")
#: The line of Hydra's help before its list of config groups, one ``group: options`` a line.
GROUPS_HEADING = "Compose your configuration from those groups (group=option)"


def refused_train(tmp_path: Path, *overrides: str) -> str:
    """The one error line of ``crackseg-train`` refusing ``overrides``; it wrote nothing."""
    output = tmp_path / "out"
    result = run_entry(
        "train",
        *overrides,
        f"hydra.run.dir={output}/run",
        f"hydra.sweep.dir={output}/sweep",
        timeout=120,
    )
    line = one_line_error(result)
    assert not output.exists()
    return line


def options_on_disk(group: str) -> list[str]:
    """Every config of ``group`` in conf/, those in its subfolders as ``paper/ksdd``."""
    folder = REPO / "conf" / group
    return sorted(
        path.relative_to(folder).with_suffix("").as_posix() for path in folder.rglob("*.yaml")
    )


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (
            ("-m", "sweep=dilate"),
            "error: Could not override 'sweep'. No match in the defaults list;"
            " to append to your default list use +sweep=dilate",
        ),
        (  # an argument of Lightning's Trainer that conf/trainer/ leaves out
            ("trainer.max_steps=5",),
            "error: Could not override 'trainer.max_steps': Key 'max_steps' is not in struct;"
            " to append to your config use +trainer.max_steps=5",
        ),
    ],
)
def test_hydras_advice_stays_on_the_error_line(tmp_path, overrides, expected):
    assert refused_train(tmp_path, *overrides) == expected


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("data.dilat=3", "error: data.dilat is not a setting (did you mean data.dilate?)"),
        ("data.augment.hflp=0.1", "error: data.augment.hflp is not a setting (did you mean "),
        ("loss.delta=1", "error: loss.delta is not a setting (did you mean loss.delta_cls?)"),
        ("data.zzz=1", "error: data.zzz is not a setting (known: all_as_test, augment, "),
        (
            "data.dagm_class=2",
            "error: data.dagm_class is not a setting of this config (only of data=dagm)",
        ),
        ("seeed=1", "error: seeed is not a setting (did you mean seed?)"),
        ("nokey=1", "error: nokey is not a setting (known: callbacks, data, logger, loss, "),
        ("trainer.max_epoch=1", "error: trainer.max_epoch is not a setting (did you mean "),
        # one the Trainer does not take: added with + as Hydra advised, the Trainer refused it
        ("trainer.nokey=1", "error: trainer.nokey is not a setting (known: accelerator, "),
        # a key of the block's config that crackseg reads, not the scheduler's class
        (
            "scheduler.intervall=step",
            "error: scheduler.intervall is not a setting (did you mean scheduler.interval?)",
        ),
        # added with +, as Hydra advised, it was one nothing read: the run trained with seed 0
        ("-m", "error: +seeed=0,1 adds a setting nothing reads (did you mean seed?)"),
    ],
)
def test_a_mistyped_setting_is_named_with_the_one_meant(tmp_path, override, expected):
    """Not Hydra's advice to add the key with +, which would only be refused next, or
    ignored."""
    overrides = ("-m", "+seeed=0,1") if override == "-m" else (override,)
    if override.startswith("scheduler."):
        overrides = ("scheduler=step", *overrides)
    assert refused_train(tmp_path, *overrides).startswith(expected)


def test_a_setting_of_a_group_left_unchosen_names_the_option_that_sets_it(tmp_path):
    """Not "the command has no scheduler settings" (a block no option filled is not a block
    the command lacks), nor Hydra's +scheduler.step_size=3, a block nothing builds."""
    assert refused_train(tmp_path, "scheduler.step_size=3") == (
        "error: scheduler.step_size is not a setting: no scheduler option is chosen: "
        "scheduler=step sets it"
    )


def test_a_setting_added_that_nothing_reads_is_refused(tmp_path):
    for number, (command, typed, expected) in enumerate(
        (
            ("train", "+seeed=1", "+seeed=1 adds a setting nothing reads (did you mean seed?)"),
            (
                "predict",
                "pixel_size=0.2",
                "pixel_size is not a setting (did you mean pixel_size_mm?)",
            ),
            (
                "predict",
                "+pixel_size=0.2",
                "+pixel_size=0.2 adds a setting nothing reads (did you ",
            ),
            ("export", "+output=m.onnx", "+output=m.onnx adds a setting nothing reads (known: "),
            # not "only of data=crack_segmentation": predict has no data group to choose
            ("predict", "data.dilate=3", "data.dilate is not a setting: this command has no data"),
            # deleted, the key was missed later: a KeyError's traceback, exit 1
            ("predict", "~overlap", "~overlap deletes a setting this command reads: set it "),
        )
    ):
        needed = {"train": [], "predict": ["ckpt_path=x", "input=x"], "export": ["ckpt_path=x"]}
        run_dir = tmp_path / str(number)
        result = run_entry(command, *needed[command], typed, f"hydra.run.dir={run_dir}")
        assert result.returncode == 2
        assert one_line_error(result).startswith(f"error: {expected}"), (command, typed)


def test_a_list_of_values_without_multirun_says_to_add_it(tmp_path):
    line = refused_train(tmp_path, "data.dilate=1,3")
    assert line.startswith("error: Ambiguous value for argument 'data.dilate=1,3'; to use it as")
    assert line.endswith("; to sweep over it, add --multirun to your command line")


def test_a_sweep_jobs_folder_typed_unquoted_is_refused_with_its_quoted_form(tmp_path):
    """A job's folder is named by its settings (``0_data.dilate=1,seed=0``): typed as a
    path, Hydra reads its ``=`` and ``,`` as syntax."""
    job = tmp_path / "sweep" / "0_data.dilate=1,seed=0"
    line = refused_train(tmp_path, f"resume={job}")
    assert line == (
        f"error: cannot parse resume={job}: mismatched input '=' expecting <EOF>; "
        f"quote the value: 'resume=\"{job}\"'"
    )
    # a mistake in a sweep's syntax is not a path to quote
    assert "quote the value" not in refused_train(tmp_path, "-m", "seed=range(0,3")
    assert "quote the value" not in refused_train(tmp_path, "-m", "seed=range(0, 3")


def test_a_file_name_with_brackets_or_accents_is_refused_with_its_quoted_form(tmp_path):
    line = refused_train(tmp_path, "data.root=scans (1)")
    assert line.endswith("""; quote the value: 'data.root="scans (1)"'""")
    line = refused_train(tmp_path, "data.root=/data/béton")
    assert line.endswith("""; quote the value: 'data.root="/data/béton"'""")


@pytest.mark.parametrize("quoted", [False, True])
def test_a_tilde_the_shell_left_is_refused_saying_to_write_home(tmp_path, quoted):
    """The shell expands ``~`` only at a word's start, not after ``key=``; Hydra cannot
    parse it bare, and quoted it is a folder named ``~``."""
    value = "'~/runs/a'" if quoted else "~/runs/a"
    line = refused_train(tmp_path, f"hydra.run.dir={value}")
    expected = "hydra.run.dir=~/runs/a: Hydra does not expand ~; write hydra.run.dir=$HOME/runs/a"
    assert line == f"error: {expected}"
    assert not (tmp_path / "~").exists() and not (REPO / "~").exists()
    line = refused_train(tmp_path, "data.root=~/scans")
    assert line.endswith("; write data.root=$HOME/scans")


def test_an_unknown_experiment_lists_those_in_subfolders_too(tmp_path):
    line = refused_train(tmp_path, "experiment=nope")
    head, _, available = line.partition(" (available: ")
    assert head == "error: In 'train': Could not find 'experiment/nope'"
    assert "paper/ksdd" in available.split(", ")
    assert available.removesuffix(")").split(", ") == options_on_disk("experiment")


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        ([], "the following arguments are required: folder"),
        (["a", "b"], "unrecognized arguments: b"),
        (["--bogus", "a"], "unrecognized arguments: --bogus"),
    ],
)
def test_summary_refuses_bad_arguments_with_one_line(capsys, argv, expected):
    assert summary_main(argv) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == (f"error: crackseg-summary: {expected} (see crackseg-summary --help)\n")


def listed_groups(help_text: str) -> dict[str, list[str]]:
    """The config groups of a ``--help`` and the options it lists for each."""
    section = help_text.split(GROUPS_HEADING, 1)[1].split("== Config ==", 1)[0]
    lines = [line for line in section.splitlines() if line.strip() and not line.startswith("(")]
    groups = (line.partition(": ") for line in lines)
    return {group: options.split(", ") for group, _, options in groups}


def test_eval_help_lists_the_groups_eval_takes_with_every_option():
    result = run_entry("eval", "--help", timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.startswith("crackseg-eval ckpt_path=PATH")
    assert listed_groups(result.stdout) == {group: options_on_disk(group) for group in EVAL_GROUPS}
    assert "ckpt_path: ???" in result.stdout  # and the settings, as before


def test_train_help_says_how_to_call_it_and_lists_every_option_with_how_it_is_typed(tmp_path):
    result = run_entry("train", "--help", timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.startswith("crackseg-train [group=option ...] [key=value ...]")
    listed = listed_groups(result.stdout)
    assert listed["experiment/paper"] == ["dagm", "ksdd", "ksdd2", "severstal"]
    assert "typed experiment=paper/ksdd for a subfolder's config" in result.stdout
    for group in ("data", "model", "optim", "sweep", "trainer"):
        assert listed[group] == options_on_disk(group)
    # a project's own configs (--config-dir) are listed too
    (tmp_path / "experiment").mkdir()
    (tmp_path / "experiment" / "night_shift.yaml").write_text("# @package _global_\n")
    result = run_entry("train", "--config-dir", str(tmp_path), "--help", timeout=120)
    assert "night_shift" in listed_groups(result.stdout)["experiment"]


@pytest.mark.parametrize(
    "path",
    [
        "/tmp/plain/split.csv",
        "/tmp/g ü/it's a=b,c.csv",
        "/runs/3_seed=0~ab12cd34",  # a job folder shortened with its hash
        'a\\b\\"quoted"\\',
    ],
)
def test_a_path_the_commands_advise_typing_reads_back_as_it_was(path):
    """The hints that name a path (``crackseg-data import-split``'s data.split_file, how to
    resume) quote it for the shell and for Hydra where either would misread it."""
    import shlex

    import yaml

    from crackseg.setting_rules import as_override

    typed = shlex.split(as_override("data.split_file", path))
    result = run_entry("train", *typed, "--cfg", "job", timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert yaml.safe_load(result.stdout)["data"]["split_file"] == path


def test_a_search_path_folder_that_does_not_exist_is_named(tmp_path):
    """Hydra passes over a missing folder of hydra.searchpath: the user's config would only
    be "not found" among crackseg's own."""
    missing = tmp_path / "my_configs"
    line = refused_train(tmp_path, f"hydra.searchpath=[file://{missing}]", "experiment=night")
    assert line == f"error: hydra.searchpath: file://{missing}: no such folder"
    (missing / "experiment").mkdir(parents=True)
    (missing / "experiment" / "night.yaml").write_text("# @package _global_\nrun_name: night\n")
    search = f"hydra.searchpath=[pkg://crackseg.no_such_package,file://{missing}]"
    result = run_entry("train", search, "experiment=night", "--cfg", "job", timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "run_name: night" in result.stdout


@pytest.mark.parametrize("group", ["logger", "scheduler"])
def test_a_group_chosen_as_null_is_one_line_naming_how_to_leave_it_out(tmp_path, group):
    """Hydra fails on ``logger=null`` with a traceback (a ValueError of its own); ``~logger``
    is how a group is left out, and a setting of null (``data.fold=null``) stays a value."""
    line = refused_train(tmp_path, f"{group}=null")
    assert line == (
        f"error: {group}=null: a config group is chosen by an option's name ({group}=NAME); "
        f"~{group} leaves it out"
    )
    result = run_entry("train", f"~{group}", "data.fold=null", "--cfg", "job", timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]


def test_a_plugin_config_an_extra_installs_says_which():
    """``-m hparams_search=optuna`` where the optional sweeper is not installed (a wheel
    installed without crackseg[search]): Hydra says only that the config is not found."""
    from hydra.errors import MissingConfigException

    from crackseg.error_lines import one_line

    error = MissingConfigException(
        "In 'hydra/config': Could not find 'hydra/sweeper/optuna'\n\n"
        "Available options in 'hydra/sweeper':\n\tbasic\n"
    )
    assert one_line(error) == (
        "In 'hydra/config': Could not find 'hydra/sweeper/optuna' (available: basic): "
        "pip install 'crackseg[search]' installs it"
    )


def test_a_group_added_that_the_config_chooses_already_says_how_to_choose_it(tmp_path):
    """Hydra advises ``override experiment: demo``, a defaults list's YAML: on the command
    line the option is chosen without the +."""
    line = refused_train(tmp_path, "+experiment=demo")
    assert line == "error: Multiple values for experiment; choose it without the +: experiment=demo"


def test_two_loggers_at_once_are_refused_before_anything_runs(tmp_path):
    """Hydra merges ``logger=[tensorboard,csv]`` into one config (CSVLogger given
    TensorBoard's arguments), which failed after the data was read and left a run folder."""
    line = refused_train(tmp_path, "logger=[tensorboard,csv]")
    assert line == "error: logger=[tensorboard,csv]: a run logs with one logger (logger=NAME)"


#: Run a command's module as ``python -m`` does, then name the heavy libraries it imported.
IMPORTS_PROBE = """
import runpy, sys
sys.argv = sys.argv[1:]
try:
    runpy.run_module(sys.argv[0], run_name="__main__", alter_sys=True)
except SystemExit as ended:
    code = ended.code
print(code, *sorted({"torch", "pytorch_lightning", "cv2", "scipy"} & set(sys.modules)))
"""


def run_and_list_imports(*argv: str) -> tuple[str, list[str], str]:
    """A command module run as ``python -m`` runs it: its exit code, the heavy libraries
    it imported, and what it wrote (stdout, where its log goes, then stderr)."""
    result = subprocess.run(
        [sys.executable, "-c", IMPORTS_PROBE, *argv],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
    )
    *logged, probed = result.stdout.splitlines()
    code, *imported = probed.split()
    return code, imported, "".join(f"{line}\n" for line in logged) + result.stderr


@pytest.mark.parametrize(
    "argv",
    [
        ("crackseg.train", "data=bogus"),
        ("crackseg.eval", "data.dilat=3"),
        ("crackseg.predict", "tile.sise=5"),
        ("crackseg.train", "loss.delta_cl=0.1"),
        ("crackseg.export", "data=bogus"),
        ("crackseg.sweep.summary", "--bogus"),
        ("crackseg.data.tools", "--help"),
    ],
)
def test_a_mistyped_command_never_waits_for_torch(argv):
    """A mistyped setting is answered before torch loads (a second of CPU, more than the
    rest of the command); the dataset tools need none of the network's libraries."""
    code, imported, output = run_and_list_imports(*argv)
    assert code == ("0" if argv[-1] == "--help" else "2"), output[-2000:]
    assert not {"torch", "pytorch_lightning"} & set(imported), imported
    if argv[0] != "crackseg.data.tools":  # which reads and writes images
        assert imported == [], imported


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (("crackseg.predict", "ckpt_path={missing}"), "error: checkpoint {missing} does not exist"),
        (
            ("crackseg.predict", "ckpt_path={text}"),
            "error: cannot read checkpoint {text}: not a PyTorch checkpoint (a text file)",
        ),
        (
            ("crackseg.predict", "backend=onnx", "ckpt_path=null", "onnx_path={missing}"),
            "error: ONNX model {missing} does not exist",
        ),
        (
            ("crackseg.predict", "backend=onnx", "ckpt_path=null", "onnx_path={begun}"),
            "error: ONNX model {begun} begins as a PyTorch checkpoint does (a zip archive or a "
            "pickle), not as an ONNX model: a checkpoint is predicted with backend=torch "
            "ckpt_path={begun}",
        ),
        (
            ("crackseg.predict", "backend=onnx", "ckpt_path=null", "onnx_path={text}"),
            "error: ONNX model {text} is a text file, not an ONNX model",
        ),
        (("crackseg.predict", "ckpt_path={text}", "overlap=2"), "error: overlap must be a number"),
        (("crackseg.predict", "ckpt_path={begun}", "input={missing}"), "error: input {missing} "),
        (("crackseg.eval", "ckpt_path={missing}"), "error: checkpoint {missing} does not exist"),
        (("crackseg.export", "ckpt_path={missing}"), "error: checkpoint {missing} does not exist"),
        (("crackseg.export", "ckpt_path={begun}", "opset=99"), "error: opset must be at most "),
        (
            ("crackseg.export", "ckpt_path={begun}", "check_images={missing}"),
            "error: check_images={missing} does not exist",
        ),
    ],
)
def test_a_missing_file_or_a_bad_value_is_one_line_before_torch_loads(tmp_path, argv, expected):
    """What a prediction, an evaluation or an export is checked for before its weights are
    read (its settings, its model file, its images) is answered in one line, no log line
    before it, before torch loads."""
    photos = tmp_path / "photos"
    photos.mkdir()
    (photos / "a.png").write_bytes(b"")  # listed by its name: never read
    (tmp_path / "notes.ckpt").write_text("weights to come\n")
    (tmp_path / "begun.ckpt").write_bytes(b"PK\x03\x04")  # as torch.save's files begin
    names = {
        "missing": tmp_path / "missing.ckpt",
        "text": tmp_path / "notes.ckpt",
        "begun": tmp_path / "begun.ckpt",
    }
    argv = [a.format(**names) for a in argv]
    if argv[0] == "crackseg.predict" and not any(a.startswith("input=") for a in argv):
        argv.append(f"input={photos}")
    code, imported, output = run_and_list_imports(*argv, f"hydra.run.dir={tmp_path / 'run'}")
    assert code == "2", output[-2000:]
    assert not {"torch", "pytorch_lightning"} & set(imported), imported
    (line,) = output.splitlines()
    assert line.startswith(expected.format(**names)), line


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (
            ("data=crack_segmentation", "data.root={missing}"),
            "error: data root {missing} does not exist (set data.root=PATH)",
        ),
        (
            ("experiment=cfd_tiles", "data.root={empty}", "data.tile.source={missing}"),
            "error: data.tile.source {missing} does not exist (the photographs to tile; ",
        ),
        (
            ("trainer.max_epochs=0",),  # after trainer.precision=auto chose (and logged)
            "error: trainer.max_epochs must be an integer >= 1, not 0",
        ),
    ],
)
def test_a_training_refused_before_lightning_loads_says_its_error_alone(
    tmp_path, overrides, expected
):
    """A training whose settings or data are refused: a few seconds sooner, with neither
    Lightning's lines nor what was chosen before the refusal ahead of its error line."""
    names = {"missing": tmp_path / "cracks", "empty": tmp_path / "tiles"}
    typed = [o.format(**names) for o in overrides]
    code, imported, output = run_and_list_imports(
        "crackseg.train", *typed, f"hydra.run.dir={tmp_path / 'run'}"
    )
    assert code == "2", output[-2000:]
    assert "pytorch_lightning" not in imported
    (line,) = output.splitlines()
    assert line.startswith(expected.format(**names)), output[-2000:]


def test_info_said_before_a_refusal_is_left_out_of_the_console_and_kept_in_the_log(tmp_path):
    """What a command logged while its settings were checked: left off the console where
    they are refused (the error line alone), shown once where they are accepted; a warning
    at once; the job's log file keeps every line either way."""
    import io
    import logging

    from crackseg.cli import info_said_once_accepted
    from crackseg.errors import ConfigError

    console = logging.StreamHandler(io.StringIO())  # a run's two handlers, as Hydra sets up
    log_file = logging.FileHandler(tmp_path / "train.log")
    root = logging.getLogger()
    root.addHandler(console)
    root.addHandler(log_file)
    log = logging.getLogger("crackseg.test_info_said")
    log.setLevel(logging.INFO)
    try:
        with pytest.raises(ConfigError), info_said_once_accepted():
            log.info("precision: bf16-mixed")
            log.warning("a warning")
            raise ConfigError("trainer.max_epochs must be an integer >= 1, not 0")
        assert console.stream.getvalue() == "a warning\n"
        with info_said_once_accepted():
            log.info("precision: 32-true")
            assert console.stream.getvalue() == "a warning\n"
        assert console.stream.getvalue() == "a warning\nprecision: 32-true\n"
        log_file.flush()
        assert (tmp_path / "train.log").read_text() == (
            "precision: bf16-mixed\na warning\nprecision: 32-true\n"
        )
    finally:
        root.removeHandler(console)
        root.removeHandler(log_file)
        log_file.close()


@pytest.mark.parametrize(
    "module", ["train", "eval", "predict", "export", "data.tools", "sweep.summary"]
)
def test_every_command_says_its_version(module):
    """crackseg's, not Hydra's alone (Hydra's --version named only itself)."""
    result = run_entry(module, "--version")
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout == f"{version_line()}\n"
    assert result.stdout.startswith(f"crackseg {crackseg.__version__} (torch ")
