"""End-to-end runs through the Hydra entry points, as a user types them."""

from __future__ import annotations

import csv
import json
import logging
import re
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from conftest import (
    METRIC_KEYS,
    REPO,
    TINY_EVAL,
    eval_tiny,
    one_line_error,
    run_entry,
    run_tiny,
    tensorboard_hparams,
)

from crackseg.errors import ConfigError


def test_run_folder_holds_config_checkpoints_events_and_metrics(tiny_run):
    assert (tiny_run / ".hydra" / "config.yaml").is_file()
    checkpoints = sorted(p.name for p in (tiny_run / "checkpoints").glob("*.ckpt"))
    assert "last.ckpt" in checkpoints and any(n.startswith("best") for n in checkpoints)
    assert list((tiny_run / "tensorboard").glob("events.out.tfevents.*"))
    metrics = json.loads((tiny_run / "metrics.json").read_text())
    assert metrics.keys() >= METRIC_KEYS
    assert metrics["tp"] + metrics["fn"] == metrics["test_positives"]
    assert metrics["tn"] + metrics["fp"] == metrics["test_negatives"]
    names = ("report.md", "ROC.png", "precision-recall.png", "split.csv", "history.json")
    for name in (*names, "test_scores.csv"):
        assert (tiny_run / name).is_file(), name
    assert list((tiny_run / "dices").glob("*_dice_*.png"))
    rows = list(csv.DictReader((tiny_run / "test_scores.csv").open()))
    assert len(rows) == metrics["test_samples"]
    assert sum(int(r["decision"]) and int(r["label"]) for r in rows) == metrics["tp"]
    assert sum(r["dice"] != "" for r in rows) == metrics["test_positives"]


def test_overrides_reach_the_composed_config(tiny_run):
    config = yaml.safe_load((tiny_run / ".hydra" / "config.yaml").read_text())
    assert config["data"]["dilate"] == 3
    assert config["loss"]["weighted_seg_p"] == 1
    assert config["loss"]["delta_cls"] == 0.1
    assert config["trainer"]["max_epochs"] == 2


def test_history_has_per_epoch_losses_and_lambdas(tiny_run):
    history = json.loads((tiny_run / "history.json").read_text())
    for key in ("train/loss_seg", "train/loss_dec", "train/loss", "train/lambda_seg"):
        assert [epoch for epoch, _ in history[key]] == [0, 1], key
    # Dynamically balanced with delta 0.1 over 2 epochs: lambda_dec = 0, then 0.05.
    assert [round(v, 6) for _, v in history["train/lambda_dec"]] == [0.0, 0.05]
    assert [epoch for epoch, _ in history["val/image_ap"]] == [0, 1]
    # the learning rate of each epoch (no scheduler: the configured one, exactly)
    lr = yaml.safe_load((tiny_run / ".hydra" / "config.yaml").read_text())["optim"]["lr"]
    assert history["train/lr"] == [[0, lr], [1, lr]]


def test_the_history_keeps_the_optimisers_learning_rate_not_its_float32_copy(tmp_path):
    from types import SimpleNamespace

    from pytorch_lightning.trainer.states import TrainerFn

    from crackseg.callbacks import TrainingHistory

    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.01)
    trainer = SimpleNamespace(
        optimizers=[optimizer],
        sanity_checking=False,
        current_epoch=3,
        state=SimpleNamespace(fn=TrainerFn.FITTING),
        callback_metrics={"train/lr": torch.tensor(0.01), "train/loss": torch.tensor(0.5)},
    )
    history = TrainingHistory(str(tmp_path))
    history.on_train_epoch_end(trainer, None)
    assert history.history["train/lr"] == [(3, 0.01)]
    assert history.history["train/loss"] == [(3, 0.5)]


def test_the_training_curves_draw_losses_and_validation_only():
    """The loss weights and the learning rate were drawn in the panel titled Validation."""
    from crackseg.evaluation.plots import curve_panels

    history = {
        "train/loss": [(0, 0.7)],
        "train/loss_seg": [(0, 0.6)],
        "train/lambda_seg": [(0, 1.0)],
        "train/lr": [(0, 0.5)],
        "val/image_ap": [(0, 0.9)],
        "val/dice": [],
    }
    losses, validation = curve_panels(history)
    assert list(losses) == ["train/loss", "train/loss_seg"]
    assert list(validation) == ["val/image_ap"]


def test_checkpoint_knows_its_architecture_and_input_size(tiny_run):
    ckpt = torch.load(tiny_run / "checkpoints" / "last.ckpt", weights_only=True)
    hp = ckpt["hyper_parameters"]
    assert hp["input_shape"] == {"channels": 3, "height": 64, "width": 128}
    assert "data:" in hp["run_config"]


def test_a_checkpoint_knows_whether_a_validation_chose_its_thresholds(
    tiny_run, tiny_data_dir, tmp_path, caplog
):
    """Validated after every epoch, each checkpoint's thresholds are its own weights'. One
    saved before any validation (0.5, chosen by nobody) is refused by the commands that
    would use them; one whose thresholds earlier weights chose is warned about."""
    from crackseg.errors import CracksegError
    from crackseg.models.checkpoint import check_saved_thresholds, load_module

    for path in (tiny_run / "checkpoints").glob("*.ckpt"):
        saved = torch.load(path, weights_only=True)
        assert saved["thresholds_step"] == saved["global_step"] > 0, path.name
    last = torch.load(tiny_run / "checkpoints" / "last.ckpt", weights_only=True)
    never, earlier = tmp_path / "never.ckpt", tmp_path / "earlier.ckpt"
    torch.save({**last, "thresholds_step": None}, never)
    torch.save({**last, "thresholds_step": last["global_step"] - 1}, earlier)
    with pytest.raises(CracksegError, match="holds no thresholds a validation chose"):
        check_saved_thresholds(load_module(never), never, "use another")
    with caplog.at_level("WARNING"):
        check_saved_thresholds(load_module(earlier), earlier, "use another")
    assert "chosen on validation at step" in caplog.text and "on earlier weights" in caplog.text
    older = {k: v for k, v in last.items() if k != "thresholds_step"}  # saved before the key
    torch.save(older, tmp_path / "older.ckpt")
    check_saved_thresholds(load_module(tmp_path / "older.ckpt"), "older.ckpt", "use another")
    # saved by a version that kept no thresholds at all: 0.5 stands in for both, and says so
    state = {k: v for k, v in older["state_dict"].items() if not k.endswith("_threshold")}
    torch.save({**older, "state_dict": state}, tmp_path / "oldest.ckpt")
    with caplog.at_level("WARNING"):
        oldest = load_module(tmp_path / "oldest.ckpt")
    assert "saved without its image threshold: 0.5 stands in" in caplog.text
    assert oldest.stand_in_thresholds == ("image", "segmentation")

    line = one_line_error(eval_tiny(never, tmp_path / "eval", tiny_data_dir))
    assert line == (
        f"error: {never} holds no thresholds a validation chose (0.5 stands in): evaluate it "
        "with thresholds=validation, or use one saved after a validation "
        "(checkpoints/best-*.ckpt)"
    )
    assert not (tmp_path / "eval" / "metrics.json").exists()


def test_eval_of_a_checkpoint_matches_the_test_step(
    tiny_run, tiny_checkpoint, tiny_data_dir, tmp_path
):
    result = run_entry(
        "eval",
        f"ckpt_path={tiny_checkpoint}",
        # the input size and the generator's counts left out: they are the checkpoint's
        # (64x128 and 20 + 20 images, the data config's 128x128 and 280 + 280: another folder,
        # holding some of the weights' training images under other splits)
        *[o for o in TINY_EVAL if not o.startswith(("data.input_", "data.synthetic."))],
        f"paths.data_dir={tiny_data_dir}",
        f"hydra.run.dir={tmp_path}",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "data.input_height: 64, the checkpoint's" in result.stdout + result.stderr
    assert "data.synthetic.num_positives: 20, the checkpoint's" in result.stdout + result.stderr
    trained = json.loads((tiny_run / "metrics.json").read_text())
    evaluated = json.loads((tmp_path / "metrics.json").read_text())
    for key in ("image_auc", "image_ap", "tp", "fp", "tn", "fn", "seg_threshold", "dice_mean"):
        assert evaluated[key] == pytest.approx(trained[key], abs=1e-6), key
    assert evaluated["precision"] == trained["precision"] == "32-true"  # as trained
    assert evaluated["test_images_trained_on"] == 0  # the test split their run held out
    # the report gives the weights' training settings and split, not the eval config's
    assert evaluated["num_segmented"] == trained["num_segmented"]
    rows = ("| Dilate ", "| Batch size ", "| Segmented samples ", "| Weak positives ")
    for report in (tiny_run / "report.md", tmp_path / "report.md"):
        lines = report.read_text().splitlines()
        assert len([line for line in lines if line.startswith(rows)]) == len(rows)
    assert [r for r in (tmp_path / "report.md").read_text().splitlines() if r.startswith(rows)] == [
        r for r in (tiny_run / "report.md").read_text().splitlines() if r.startswith(rows)
    ]
    # an evaluation, and of which weights, with whose thresholds
    assert evaluated["evaluated_checkpoint"] == str(tiny_checkpoint)
    assert evaluated["thresholds_from"] == "checkpoint"
    report = (tmp_path / "report.md").read_text()
    assert report.startswith("# Results of evaluating weights on ")
    assert f"Weights: `{tiny_checkpoint}`, trained with the run parameters below" in report
    assert "chosen on the validation split of the weights' training run" in report
    # image by image (crackseg-predict's scores are checked against these in test_predict)
    assert (tmp_path / "test_scores.csv").read_text() == (tiny_run / "test_scores.csv").read_text()
    # strict JSON: an evaluation has no validation AP (null, not NaN)
    status = json.loads((tmp_path / "status.json").read_text(), parse_constant=_refuse)
    assert status["status"] == "finished" and status["metrics"]["best_val_image_ap"] is None


def _refuse(constant: str) -> None:
    raise ValueError(f"{constant} in strict JSON")


def test_eval_choosing_its_thresholds_on_test_says_so(tiny_checkpoint, tiny_data_dir, tmp_path):
    """thresholds=validation chooses them on the data given: its validate_on_test counts,
    not the training run's."""
    result = eval_tiny(
        tiny_checkpoint, tmp_path, tiny_data_dir, "thresholds=validation", "validate_on_test=true"
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = (tmp_path / "report.md").read_text()
    assert "Segmentation threshold: " in report and "chosen on the test split" in report
    assert "never on the test split" not in report
    assert "thresholds: chosen again on this data (`thresholds=validation`)" in report
    assert "of the weights' training run" not in report
    # what the validation that chose them scored, as a training run records its own
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["thresholds_from"] == "validation"
    assert metrics["best_val_image_ap"] is not None and "seg_threshold_val_dice" in metrics


def test_eval_refuses_a_missing_checkpoint(tmp_path):
    line = one_line_error(
        run_entry("eval", f"ckpt_path={tmp_path}/nope.ckpt", f"hydra.run.dir={tmp_path}/o")
    )
    assert "does not exist" in line


def test_eval_refuses_an_unreadable_checkpoint(tmp_path):
    bad = tmp_path / "bad.ckpt"
    bad.write_bytes(b"not a checkpoint")
    line = one_line_error(run_entry("eval", f"ckpt_path={bad}", f"hydra.run.dir={tmp_path}/o"))
    assert "cannot read checkpoint" in line


def test_eval_refuses_a_checkpoint_of_another_input_size(tiny_checkpoint, tmp_path):
    line = one_line_error(
        run_entry(
            "eval",
            f"ckpt_path={tiny_checkpoint}",
            "data.input_height=128",
            f"hydra.run.dir={tmp_path}",
        )
    )
    assert "3x64x128" in line and "3x128x128" in line


def test_a_size_not_divisible_by_8_is_refused(tmp_path):
    line = one_line_error(run_entry("train", "data.input_height=100", f"hydra.run.dir={tmp_path}"))
    assert "not divisible by 8" in line
    assert not (tmp_path / "checkpoints").exists()


def test_an_unknown_config_name_is_refused(tmp_path):
    line = one_line_error(run_entry("train", "model=nope", f"hydra.run.dir={tmp_path}"))
    assert "model/nope" in line and "segdec_small" in line  # the options are listed


def test_a_missing_data_root_is_refused_before_training(tmp_path):
    line = one_line_error(
        run_entry(
            "train",
            "data=crack_segmentation",
            f"data.root={tmp_path}/nowhere",
            f"hydra.run.dir={tmp_path}/run",
        )
    )
    assert "nowhere" in line and "does not exist" in line
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_without_validation_the_final_weights_are_tested(tmp_path, tiny_data_dir):
    result = run_tiny(tmp_path, tiny_data_dir, "validate=false")
    assert result.returncode == 0, result.stderr[-3000:]
    history = json.loads((tmp_path / "history.json").read_text())
    assert "val/image_ap" not in history  # no validation while training
    assert not list((tmp_path / "checkpoints").glob("best*.ckpt"))
    log = (tmp_path / "train.log").read_text()
    assert "testing the final weights" in log
    assert "use_best_model: no validation chose best weights (validate=false)" in log
    # use_best_model=true (the default) could not be followed: the report says what was done
    report = (tmp_path / "report.md").read_text()
    assert re.search(r"\| Use best model +\| False +\|", report)
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["seg_threshold"] is not None
    # the thresholds it was tested with are in its checkpoint, for eval, predict and export
    from crackseg.models.checkpoint import check_saved_thresholds, load_module, thresholds

    last = tmp_path / "checkpoints" / "last.ckpt"
    module = load_module(last)
    check_saved_thresholds(module, last, "use another")
    assert thresholds(module) == pytest.approx(
        (metrics["image_threshold"], metrics["seg_threshold"])
    )


def test_the_checkpoint_carries_the_validation_thresholds(tiny_run, tiny_checkpoint):
    from crackseg.models.checkpoint import load_module, thresholds

    metrics = json.loads((tiny_run / "metrics.json").read_text())
    image_threshold, seg_threshold = thresholds(load_module(tiny_checkpoint))
    assert image_threshold == pytest.approx(metrics["image_threshold"])
    assert seg_threshold == pytest.approx(metrics["seg_threshold"])


def test_eval_of_a_whole_folder_uses_the_checkpoint_thresholds(
    tiny_checkpoint, tiny_data_dir, tmp_path
):
    # Thresholds no validation split would choose: eval must take them from the checkpoint.
    ckpt = torch.load(tiny_checkpoint, weights_only=True)
    ckpt["state_dict"]["image_threshold"] = torch.tensor(0.999)
    ckpt["state_dict"]["seg_threshold"] = torch.tensor(0.97)
    # and weights trained in bf16: eval's trainer.precision=auto evaluates in it
    trained_config = yaml.safe_load(ckpt["hyper_parameters"]["run_config"])
    assert trained_config["trainer"]["precision"] == "32-true"
    trained_config["trainer"]["precision"] = "bf16-mixed"
    ckpt["hyper_parameters"]["run_config"] = yaml.safe_dump(trained_config)
    edited = tmp_path / "edited.ckpt"
    torch.save(ckpt, edited)
    # every image of the data the weights trained on would test them on their training images
    line = one_line_error(
        eval_tiny(edited, tmp_path / "refused", tiny_data_dir, "data.all_as_test=true")
    )
    assert line.startswith("error: data.all_as_test=true on the data the weights were trained")
    assert not (tmp_path / "refused" / "metrics.json").exists()
    # the same images in another folder: copies of their training images, found by content
    other_data = tmp_path / "other_data"
    shutil.copytree(tiny_data_dir, other_data)
    result = eval_tiny(edited, tmp_path / "eval", other_data, "data.all_as_test=true")
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert metrics["image_threshold"] == pytest.approx(0.999)
    assert metrics["seg_threshold"] == pytest.approx(0.97)
    assert metrics["precision"] == "bf16-mixed"
    assert metrics["test_samples"] == 40 and metrics["train_samples"] == 0
    trained_images = torch.load(edited, weights_only=True)["CrackDataModule"]["split"]
    copies = len(trained_images["train_files"])
    assert 0 < metrics["test_images_trained_on"] == copies < 40
    assert (
        f"{copies} of the 40 test images are images the weights trained on, or copies of them"
        in (result.stderr + result.stdout)
    )
    # their own folder read through another layout: the names tell the images they trained
    # on, which is said, in the report too
    (root,) = tiny_data_dir.glob("synthetic_*")
    result = eval_every_image_of_a_folder(edited, root, tmp_path / "folder")
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((tmp_path / "folder" / "metrics.json").read_text())
    trained = metrics["test_images_trained_on"]
    assert 0 < trained < metrics["test_samples"] == 40
    assert f"{trained} of the test images are images the weights trained on" in (
        (tmp_path / "folder" / "report.md").read_text()
    )
    assert f"{trained} of the 40 test images are images the weights trained on" in (
        result.stderr + result.stdout
    )
    assert metrics["tp"] + metrics["fn"] == 20 and metrics["tn"] + metrics["fp"] == 20
    # the test images counted at the checkpoint's 0.999, from their scores
    with open(tmp_path / "eval" / "test_scores.csv", newline="") as table:
        rows = [(int(r["label"]), float(r["decision_score"])) for r in csv.DictReader(table)]
    assert len(rows) == 40
    assert metrics["tp"] == sum(label == 1 and score >= 0.999 for label, score in rows)
    assert metrics["fp"] == sum(label == 0 and score >= 0.999 for label, score in rows)


def test_weights_trained_on_a_relative_data_path_know_their_data_from_any_folder(
    tiny_run, tiny_data_dir, tmp_path
):
    """A run started with relative data paths records them as the files they named, so that
    an evaluation run from another folder still refuses to test the weights on their own
    training images, and one typing the same relative split file is not refused."""
    import os

    from crackseg.models.checkpoint import checkpoint_run_config

    run_dir = tmp_path / "run"
    relative = os.path.relpath(tiny_data_dir, REPO)
    split = os.path.relpath(shutil.copy(tiny_run / "split.csv", tmp_path / "split.csv"), REPO)
    result = run_tiny(run_dir, Path(relative), f"data.split_file={split}", "trainer.max_epochs=1")
    assert result.returncode == 0, result.stderr[-3000:]
    checkpoint = run_dir / "checkpoints" / "last.ckpt"
    recorded = checkpoint_run_config(checkpoint)
    (root,) = tiny_data_dir.glob("synthetic_*")
    assert recorded.paths.data_dir == str(tiny_data_dir)
    assert recorded.data.root == str(root)
    assert recorded.data.split_file == str(tmp_path / "split.csv")
    same = eval_tiny(checkpoint, tmp_path / "same", Path(relative), f"data.split_file={split}")
    assert same.returncode == 0, same.stderr[-3000:]
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    overrides = [f"ckpt_path={checkpoint}", *TINY_EVAL, f"paths.data_dir={tiny_data_dir}"]
    eval_dir = f"hydra.run.dir={tmp_path / 'eval'}"
    refused = run_entry("eval", *overrides, "data.all_as_test=true", eval_dir, cwd=elsewhere)
    assert one_line_error(refused).startswith(
        "error: data.all_as_test=true on the data the weights were trained on"
    )


def test_the_sweep_objective_is_the_best_validation_ap(tiny_run):
    status = json.loads((tiny_run / "status.json").read_text())
    ckpt = torch.load(tiny_run / "checkpoints" / "last.ckpt", weights_only=True)
    (best_score,) = [
        state["best_model_score"]
        for key, state in ckpt["callbacks"].items()
        if key.startswith("ModelCheckpoint") and "val/image_ap" in key
    ]
    assert status["metrics"]["best_val_image_ap"] == pytest.approx(float(best_score))


def eval_every_image_of_a_folder(checkpoint: Path, root: Path, out: Path, *extra: str):
    """``crackseg-eval`` of ``checkpoint`` on every image of ``root`` read as ``data=folder``
    (the tiny run's sizes), into ``out``."""
    settings = [o for o in TINY_EVAL if not o.startswith("data.synthetic.")]
    return run_entry(
        "eval",
        f"ckpt_path={checkpoint}",
        "data=folder",
        *settings,
        f"data.root={root}",
        "data.all_as_test=true",
        *extra,
        f"hydra.run.dir={out}",
    )


def test_eval_through_another_layout_counts_the_training_images_of_split_folders(
    tiny_run, tiny_data_dir, tmp_path
):
    """Weights trained on a folder of train/, val/ and test/ folders, evaluated on its
    train/ images through ``data=folder``: every one of them is an image they trained on,
    though its sample id is another (``train_X`` there, ``X`` here)."""
    (source,) = tiny_data_dir.glob("synthetic_*")
    data = tmp_path / "data"
    for i, image in enumerate(sorted((source / "images").glob("*.png"))):
        split = ("train", "val", "train", "test")[i % 4]  # crack_ and noncrack_ in each
        for folder in ("images", "masks"):
            (data / split / folder).mkdir(parents=True, exist_ok=True)
            shutil.copy(source / folder / image.name, data / split / folder / image.name)
    settings = [o for o in TINY_EVAL if not o.startswith("data.synthetic.")]
    run = tmp_path / "run"
    result = run_entry(
        "train",
        "data=crack_segmentation",
        f"data.root={data}",
        *settings,
        "trainer.max_epochs=1",
        f"hydra.run.dir={run}",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads((run / "metrics.json").read_text())["train_samples"] == 20
    checkpoint = run / "checkpoints" / "last.ckpt"
    result = eval_every_image_of_a_folder(
        checkpoint,
        data,
        tmp_path / "eval",
        "data.layout_options.image_dir=train/images",
        "data.layout_options.mask_dir=train/masks",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert metrics["test_images_trained_on"] == metrics["test_samples"] == 20
    assert "20 of the 20 test images are images the weights trained on" in (
        result.stderr + result.stdout
    )
    # and read from the folder inside: its train/ folder as a dataset of its own
    result = eval_every_image_of_a_folder(checkpoint, data / "train", tmp_path / "eval_inside")
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((tmp_path / "eval_inside" / "metrics.json").read_text())
    assert metrics["test_images_trained_on"] == metrics["test_samples"] == 20


def test_a_checkpoint_without_its_training_files_tells_them_in_its_own_layout_only(tmp_path):
    """A checkpoint from before the training images' files were recorded holds their sample
    ids, which name them only as its own layout read them: read otherwise, it cannot tell
    (no count, rather than a false 0)."""
    from omegaconf import OmegaConf

    from crackseg.data.samples import Sample
    from crackseg.runs.trained_settings import trained_images

    checkpoint = tmp_path / "old.ckpt"
    torch.save({"CrackDataModule": {"split": {"ids": {"train": ["train_a"]}}}}, checkpoint)
    trained = OmegaConf.create({"layout": "crack_segmentation", "root": str(tmp_path)})
    alike = OmegaConf.create({"layout": "crack_segmentation", "root": str(tmp_path)})
    assert trained_images(checkpoint, alike, trained)[:2] == (frozenset({"train_a"}), None)
    options = {"image_dir": "train/images", "mask_dir": "train/masks"}
    other = OmegaConf.create({"layout": "folder", "root": str(tmp_path), "layout_options": options})
    assert trained_images(checkpoint, other, trained) is None
    # with the files recorded: from a folder inside the one trained on, in another layout
    split = {"ids": {"train": ["train_a"]}, "train_files": ["train/images/a.png"]}
    torch.save({"CrackDataModule": {"split": split}}, checkpoint)
    inside = OmegaConf.create({"layout": "folder", "root": str(tmp_path / "train")})
    images = trained_images(checkpoint, inside, trained)
    a, b = (Sample(n, tmp_path / "train" / "images" / f"{n}.png", None, True) for n in "ab")
    assert images.among([a, b], tmp_path / "train") == ["a"]
    elsewhere = OmegaConf.create({"layout": "folder", "root": str(tmp_path.parent)})
    assert trained_images(checkpoint, elsewhere, trained) is None


def test_copies_of_the_training_images_are_known_anywhere_by_their_content(tmp_path, caplog):
    """Someone's folder of photographs that holds copies of images the weights trained on
    (renamed, elsewhere): they are said to be theirs; a file of the same size but other
    bytes, or a copy of an image of their data they did not train on, is not."""
    from omegaconf import OmegaConf

    from crackseg.data.samples import Sample
    from crackseg.runs.trained_settings import trained_images

    data = tmp_path / "data"
    (data / "train" / "images").mkdir(parents=True)
    (data / "train" / "images" / "a.png").write_bytes(b"crack a")
    (data / "train" / "images" / "b.png").write_bytes(b"crack b")
    run_config = yaml.safe_dump({"data": {"layout": "crack_segmentation", "root": str(data)}})
    split = {"ids": {"train": ["train_a"]}, "train_files": ["train/images/a.png"]}
    checkpoint = tmp_path / "weights.ckpt"
    saved = {"hyper_parameters": {"run_config": run_config}, "CrackDataModule": {"split": split}}
    torch.save(saved, checkpoint)
    photos = tmp_path / "photos"
    photos.mkdir()
    contents = {"renamed": b"crack a", "same_size": b"crack c", "b": b"crack b"}
    samples = []
    for name, content in contents.items():
        (photos / f"{name}.png").write_bytes(content)
        samples.append(Sample(name, photos / f"{name}.png", None, True))
    trained = OmegaConf.create({"layout": "crack_segmentation", "root": str(data)})
    evaluated = OmegaConf.create({"layout": "folder", "root": str(photos)})
    images = trained_images(checkpoint, evaluated, trained)
    assert images.among(samples, photos) == ["renamed"]
    # their training files gone from this machine: nothing to tell, and that is said
    shutil.rmtree(data)
    with caplog.at_level(logging.INFO, logger="crackseg.runs.trained_settings"):
        assert trained_images(checkpoint, evaluated, trained) is None
    assert "images that are copies of them cannot be told" in caplog.text


def test_weights_trained_on_tiles_know_the_photographs_their_tiles_came_from(tmp_path):
    """experiment=cfd_tiles cuts whole photographs into train, validation and test; its
    weights evaluated on the photographs themselves (data.all_as_test=true) were scored on
    their training photographs without a word."""
    from omegaconf import OmegaConf

    from crackseg.data.samples import Sample
    from crackseg.data.splits import write_split_csv
    from crackseg.data.tiles import SOURCE_SPLIT_FILE
    from crackseg.runs.trained_settings import trained_images

    photos = tmp_path / "cfd"
    a, b, c = (Sample(n, photos / "images" / f"{n}.jpg", None, True) for n in "abc")
    tiles = tmp_path / "tiles"
    tiles.mkdir()
    write_split_csv(tiles / SOURCE_SPLIT_FILE, {"train": [a], "val": [b], "test": [c]})
    trained = OmegaConf.create({"root": str(tiles), "tile": {"source": str(photos), "size": 64}})
    evaluated = OmegaConf.create({"layout": "crack_segmentation", "root": str(photos)})
    images = trained_images(tmp_path / "unread.ckpt", evaluated, trained)
    assert images.among([a, b, c], photos) == ["a"]
    assert images.what == "photographs whose tiles the weights trained on, or copies of them"
    # the photographs read through a link to their folder
    link = tmp_path / "link"
    link.symlink_to(photos)
    linked = OmegaConf.create({"layout": "crack_segmentation", "root": str(link)})
    through = Sample("a", link / "images" / "a.jpg", None, True)
    assert trained_images(tmp_path / "unread.ckpt", linked, trained).among([through], link) == ["a"]
    # photographs elsewhere, or weights that cut no tiles: nothing to tell
    elsewhere = OmegaConf.create({"layout": "crack_segmentation", "root": str(tmp_path / "x")})
    assert trained_images(tmp_path / "unread.ckpt", elsewhere, trained) is None
    untiled = OmegaConf.create({"root": str(tiles)})
    assert trained_images(tmp_path / "unread.ckpt", evaluated, untiled) is None


def test_a_dataset_with_file_names_that_are_not_utf8_trains_and_its_split_reads_back(
    tiny_run, tiny_data_dir, tmp_path
):
    """Linux allows any bytes in a name (Python holds the others as surrogates): split.csv and
    the weak ranking keep them as they are, so that they give back the same samples, and
    what people read (test scores, the report and its Dice panels) shows them escaped."""
    import os
    import re
    import shutil

    from crackseg.data.splits import read_split_csv
    from crackseg.data.supervision import read_ranked_ids

    data = tmp_path / "data"
    shutil.copytree(next(tiny_data_dir.glob("synthetic_*")), data)
    renamed = set()
    for folder in ("images", "masks"):
        for path in sorted((data / folder).glob("crack_*.png")):
            new = os.fsdecode(b"caf\xe9_") + path.name
            path.rename(path.with_name(new))
            renamed.add(new.removesuffix(".png"))
    settings = [o for o in TINY_EVAL if not o.startswith("data.synthetic.")]
    result = run_entry(
        "train",
        "data=crack_segmentation",
        f"data.root={data}",
        *settings,
        "trainer.max_epochs=1",
        "data.num_segmented=4",
        f"hydra.run.dir={tmp_path / 'run'}",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    recorded = {i for ids in read_split_csv(tmp_path / "run" / "split.csv").values() for i in ids}
    assert renamed <= recorded
    run = tmp_path / "run"
    assert "caf\\xe9_crack_" in (run / "test_scores.csv").read_text(encoding="utf-8")
    # the ranking is read back (data.extra_segmented.ranking): the names as they are
    ranked = set(read_ranked_ids(run / "weak_ranking.csv"))
    assert ranked & renamed and ranked <= recorded
    # every Dice panel report.md links is there
    report = (run / "report.md").read_text(encoding="utf-8")
    links = re.findall(r"\]\((dices/[^)]+)\)", report)
    assert links and all((run / link).is_file() for link in links), links


def test_a_float16_run_is_resumed_on_a_gpu_only(tiny_run, tmp_path):
    """Off a GPU Lightning would go on in bf16; resume= keeps a run's settings: refused,
    saying where it can go on."""
    import shutil

    run = tmp_path / "run"
    shutil.copytree(tiny_run / ".hydra", run / ".hydra")
    config = yaml.safe_load((run / ".hydra" / "config.yaml").read_text())
    config["trainer"]["precision"] = "16-mixed"
    config["paths"]["output_dir"] = str(run)
    (run / ".hydra" / "config.yaml").write_text(yaml.safe_dump(config))
    (run / "status.json").write_text('{"status": "interrupted"}')
    line = one_line_error(run_entry("train", f"resume={run}"))
    assert line == (
        f"error: the run in {run} trains in 16-mixed, which needs a GPU: "
        "resume it on a machine with one"
    )


def test_the_hparams_tab_shows_what_the_command_line_set(tiny_run):
    """Beside the run parameters, every typed setting (a sweep's swept keys among them), so
    that no two jobs of a sweep look alike there."""
    hparams = tensorboard_hparams(tiny_run)
    assert hparams["precision"] == "32-true" and "trainer.precision" not in hparams  # once
    assert hparams["use_best_model"] == 1 and hparams["decision_target"] == "label"  # a bool: 1
    assert hparams["data.synthetic.num_positives"] == 20
    assert hparams["dilate"] == 3 and "data.dilate" not in hparams  # a run parameter, once
    # data.num_segmented=null (every positive) as the count, a number as in runs that set it
    num_segmented = json.loads((tiny_run / "metrics.json").read_text())["num_segmented"]
    assert hparams["num_segmented"] == num_segmented > 0


def test_a_null_setting_keeps_the_hparams_tab_of_one_type_per_key():
    """TensorBoard cannot sort or filter a column that mixes numbers and strings (a sweep
    over data.fold=0,null, or data.num_segmented=5,null)."""
    from omegaconf import OmegaConf

    from crackseg.callbacks import typed_hparams
    from crackseg.evaluation.report import hparams_of

    cfg = OmegaConf.create({"data": {"num_segmented": None, "fold": None}, "seed": 0})
    assert "data.fold" not in typed_hparams(cfg, ["data.fold=null"])
    # a group's choice that leaves no key of its name (experiment=, @package _global_)
    assert typed_hparams(cfg, ["experiment=cfd_tiles"]) == {"experiment": "cfd_tiles"}
    assert hparams_of(cfg, num_segmented=14)["num_segmented"] == 14
    assert "num_segmented" not in hparams_of(cfg)


def test_eval_tests_on_the_images_the_weights_run_held_out(tmp_path, caplog):
    """A fold's checkpoint, evaluated on its data, is tested on its own test fold: its fold,
    split file, seed, fractions and DAGM class are its run's unless typed. A typed fold is
    refused, a typed seed warned about; another DAGM class typed is other data."""
    from omegaconf import OmegaConf

    from crackseg.runs.trained_settings import take_trained_split

    trained = OmegaConf.create(
        {"layout": "ksdd", "root": str(tmp_path), "num_folds": 3, "fold": 1, "split_seed": 4}
    )
    data = OmegaConf.create(
        {"layout": "ksdd", "root": f"{tmp_path}/.", "num_folds": 3, "fold": 0, "split_seed": 0}
    )
    take_trained_split(data, trained, typed=set())
    assert (data.fold, data.split_seed) == (1, 4)
    data.fold = 2
    with pytest.raises(ConfigError, match=r"data.fold=2 differs from .* \(data.fold=1\)"):
        take_trained_split(data, trained, typed={"data.fold"})
    data.fold, data.split_seed = 1, 5
    with caplog.at_level("WARNING"):
        take_trained_split(data, trained, typed={"data.split_seed"})
    assert "data.split_seed=5 differs" in caplog.text and data.split_seed == 5
    other = OmegaConf.create({"layout": "ksdd", "root": "/elsewhere", "fold": 0})
    take_trained_split(other, trained, typed=set())  # other data: its own split
    assert other.fold == 0
    dagm = {"layout": "dagm", "root": str(tmp_path), "dagm_class": 3, "split_seed": 4}
    untyped = OmegaConf.create({**dagm, "dagm_class": 1, "split_seed": 0})
    take_trained_split(untyped, OmegaConf.create(dagm), typed=set())
    assert (untyped.dagm_class, untyped.split_seed) == (3, 4)
    other_class = OmegaConf.create({**dagm, "dagm_class": 2, "split_seed": 0})
    take_trained_split(other_class, OmegaConf.create(dagm), typed={"data.dagm_class"})
    assert (other_class.dagm_class, other_class.split_seed) == (2, 0)


def test_eval_refuses_a_typed_split_that_would_test_on_training_images(
    tiny_checkpoint, tiny_data_dir, tmp_path
):
    result = eval_tiny(tiny_checkpoint, tmp_path / "eval", tiny_data_dir, "data.fold=1")
    assert one_line_error(result).startswith(
        "error: data.fold=1 differs from the weights' training run on this data (data.fold=null)"
    )


def test_an_evaluation_reports_the_training_settings_and_its_own_precision():
    from omegaconf import OmegaConf

    from crackseg.runs.trained_settings import reported_config

    trained = OmegaConf.create(
        {
            "data": {"root": "/d", "dilate": 3, "batch_size": 2, "num_segmented": 20},
            "trainer": {"precision": "bf16-mixed"},
        }
    )
    data = OmegaConf.create({"root": "/d", "dilate": 1, "batch_size": 8, "num_segmented": None})
    cfg = OmegaConf.create({"thresholds": "checkpoint", "trainer": {"precision": "32-true"}})
    reported = reported_config(trained, data, cfg)
    assert (reported.data.dilate, reported.data.batch_size, reported.data.num_segmented) == (
        3,
        2,
        20,
    )
    assert reported.trainer.precision == "32-true"  # what this evaluation ran in


def test_an_evaluation_rebuilds_the_training_split_only_on_the_weights_own_data(tmp_path):
    from omegaconf import OmegaConf

    from crackseg.runs.trained_settings import rebuild_training_split

    trained = OmegaConf.create(
        {
            "layout": "dagm",
            "root": str(tmp_path),
            "dagm_class": 1,
            "num_segmented": 5,
            "train_positives": 30,
            "extra_segmented": {"ranking": None},
        }
    )

    def data(**changes):
        base = {"layout": "dagm", "root": str(tmp_path), "dagm_class": 1, "num_segmented": None}
        return OmegaConf.create({**base, **changes})

    same = data()
    assert rebuild_training_split(same, trained)
    assert (same.num_segmented, same.train_positives) == (5, 30)
    assert not rebuild_training_split(data(dagm_class=2), trained)  # another class
    assert not rebuild_training_split(data(root=str(tmp_path / "other")), trained)
    # the ranking that chose the segmented positives is not here: nothing rebuilt
    trained.extra_segmented.ranking = str(tmp_path / "moved" / "weak_ranking.csv")
    kept = data()
    assert not rebuild_training_split(kept, trained) and kept.num_segmented is None


def test_a_validation_and_a_test_split_of_one_image_each(tiny_run, tiny_data_dir, tmp_path):
    """torchmetrics gives a result of one element back as a scalar: an IndexError ended the
    run where a split held one image (a 9-photograph folder split 70/15/15 does)."""
    rows = list(csv.DictReader((tiny_run / "split.csv").open()))
    kept = {"val": None, "test": None}
    for row in rows:
        if row["split"] in kept and kept[row["split"]] is None and row["label"] == "1":
            kept[row["split"]] = row["sample_id"]
    split = tmp_path / "split.csv"
    with split.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["split", "sample_id"])
        for row in rows:
            alone = row["sample_id"] in kept.values()
            writer.writerow([row["split"] if alone else "train", row["sample_id"]])
    run_dir = tmp_path / "run"
    result = run_tiny(run_dir, tiny_data_dir, f"data.split_file={split}", "trainer.max_epochs=1")
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert (metrics["val_samples"], metrics["test_samples"]) == (1, 1)
    assert metrics["tp"] + metrics["fn"] == 1
