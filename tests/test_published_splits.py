"""The paper's published split files: read without running anything, turned into a
split.csv that data.split_file takes, segmented positives included."""

from __future__ import annotations

import os
import pickle
import struct
from pathlib import Path

import pytest
from conftest import datamodule_of
from helpers.paper_replicas import make_dagm, make_ksdd, make_ksdd2_like

from crackseg.data.datamodule import CrackDataModule
from crackseg.data.published_splits import load_plain_pickle, published_split
from crackseg.data.tools import main
from crackseg.errors import ConfigError, DataError


class _OpensAFile:
    """Unpickling it would call open(path, 'w'): a file appears if the loader runs it."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


class _RunsACommand:
    def __init__(self, path: Path) -> None:
        self.command = f"touch {path}"

    def __reduce__(self):
        return (os.system, (self.command,))


def _dump(path: Path, content) -> Path:
    path.write_bytes(pickle.dumps(content))
    return path


@pytest.mark.parametrize("payload", [_OpensAFile, _RunsACommand])
def test_a_pickle_that_would_run_code_is_refused_and_nothing_runs(tmp_path, payload, capsys):
    witness = tmp_path / "created_by_the_pickle"
    evil = _dump(tmp_path / "split_5.pyb", ([("a", True), payload(witness)], []))
    assert (
        main(["import-split", str(evil), "--dataset", "ksdd2", "--output", str(tmp_path / "s.csv")])
        == 2
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: {evil} is refused: it names ")
    assert not witness.exists() and not (tmp_path / "s.csv").exists()
    # the check is real: a plain pickle.load runs it
    with evil.open("rb") as handle:
        pickle.load(handle)
    assert witness.exists()


@pytest.mark.parametrize(
    "content,says",
    [
        (({"a": True}, []), "it holds a dict"),
        (([(b"a", True)], []), "it holds a bytes"),
        (([("a", None)], []), "it holds a NoneType"),
    ],
)
def test_only_lists_tuples_sets_strings_numbers_and_booleans(tmp_path, content, says):
    with pytest.raises(DataError, match=says):
        load_plain_pickle(_dump(tmp_path / "x.pyb", content))
    assert load_plain_pickle(_dump(tmp_path / "ok.pyb", ([("a", 1.5)], {3}, frozenset()))) == (
        [("a", 1.5)],
        {3},
        frozenset(),
    )


@pytest.mark.parametrize("protocol", [2, 3, 4, 5])
def test_numpy_flags_and_names_are_read_as_plain_values_without_numpy_running(tmp_path, protocol):
    """A split written by a script that used numpy holds numpy.bool_ flags, numpy.str_
    names: read from their bytes by the loader's own stand-ins, as Python values."""
    import numpy as np

    content = (
        [(np.str_("kos01"), np.bool_(True)), ("kos02", np.bool_(False))],
        [(np.str_("Ü2.PNG"), np.int64(-3)), (np.uint8(7), np.float32(0.5), np.float64(0.25))],
    )
    path = tmp_path / "numpy.pyb"
    path.write_bytes(pickle.dumps(content, protocol=protocol))
    loaded = load_plain_pickle(path)
    assert loaded == ([("kos01", True), ("kos02", False)], [("Ü2.PNG", -3), (7, 0.5, 0.25)])
    assert [type(v) for v in loaded[0][0]] == [str, bool]
    # an array is no plain value: refused, unbuilt
    path.write_bytes(pickle.dumps(([np.zeros(2)], []), protocol=protocol))
    with pytest.raises(DataError, match=r"is refused: it names numpy"):
        load_plain_pickle(path)


def test_a_file_built_to_fill_the_memory_is_refused(tmp_path):
    """One long string read into bytes over and over by the stand-in of protocol 2's
    ``_codecs.encode``: refused once it makes far more than the file holds."""
    text = "x" * 100_000
    body = b"\x80\x02]q\x00"  # PROTO 2, EMPTY_LIST, BINPUT 0
    body += b"X" + struct.pack("<I", len(text)) + text.encode() + b"q\x01"  # memo 1: text
    body += b"c_codecs\nencode\nq\x02("  # memo 2: the stand-in; MARK
    body += (b"h\x02h\x01X\x06\x00\x00\x00latin1\x86R") * 200  # 200 calls on memo 1
    path = tmp_path / "bomb.pyb"
    path.write_bytes(body + b"e.")  # APPENDS, STOP
    with pytest.raises(DataError, match=r"make far more than the file holds"):
        load_plain_pickle(path)
    # and a number too long to be any file's name is no sample's, not a traceback
    big = _dump(tmp_path / "big.pyb", ([(10**5000, True)], []))
    with pytest.raises(DataError, match=r"not a ksdd2 split: train holds"):
        published_split(big, "ksdd2")


def test_garbage_and_wrong_shapes_are_one_line(tmp_path):
    (tmp_path / "cut.pyb").write_bytes(pickle.dumps([("a", True)] * 10)[:15])
    with pytest.raises(DataError, match="not a readable pickle"):
        load_plain_pickle(tmp_path / "cut.pyb")
    with pytest.raises(DataError, match=r"not a severstal split: .*expected \(train, test, val\)"):
        published_split(_dump(tmp_path / "two.pyb", ([], [])), "severstal")
    with pytest.raises(DataError, match=r"holds \('a', 'yes'\), not \(name, is_segmented\)"):
        published_split(_dump(tmp_path / "flag.pyb", ([("a", "yes")], [])), "ksdd2")
    # a KolektorSDD file read as KolektorSDD2's: its first fold's whole list, shortened
    folds = [[(f"kos{i:02d}", True) for i in range(300)]] * 3
    with pytest.raises(DataError) as refused:
        published_split(_dump(tmp_path / "ksdd.pyb", (folds, folds)), "ksdd2")
    line = str(refused.value)
    assert "train holds [('kos00', True), ('kos01', True)," in line
    assert "('kos05', True), ...], not (name, is_segmented)" in line
    assert len(line) < 300
    with pytest.raises(DataError, match="holds 2 folds: --fold must be 0..1"):
        published_split(_dump(tmp_path / "f.pyb", ([[], []], [[], []])), "ksdd", fold=2)
    # DAGM's folds are its classes, from 1, as the paper's --FOLD numbers them
    for fold in (0, 3):
        with pytest.raises(DataError, match="holds 2 folds: --fold must be 1..2"):
            published_split(tmp_path / "f.pyb", "dagm", fold=fold)
    with pytest.raises(DataError, match="choose one with --fold .fold K is ClassK."):
        published_split(tmp_path / "f.pyb", "dagm")


def test_a_list_holding_itself_is_refused_not_read_for_ever(tmp_path, capsys):
    looped: list = []
    looped.append(looped)
    source = _dump(tmp_path / "split_0.pyb", (looped, []))
    output = tmp_path / "split.csv"
    assert main(["import-split", str(source), "--dataset", "ksdd2", "--output", str(output)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {source} is not a ksdd2 split") and err.count("\n") == 1
    assert not output.exists()


def test_a_published_split_given_as_a_split_file_says_to_import_it(tmp_path):
    root = make_ksdd2_like(tmp_path / "ksdd2")
    source = _dump(tmp_path / "split_0.pyb", ([("10000", False)], [("10001", False)]))
    with pytest.raises(DataError, match=r"is a published split .* crackseg-data import-split"):
        datamodule_of(root, layout="ksdd2", split_file=str(source))


def test_import_split_refuses_to_overwrite(tmp_path, capsys):
    split = _dump(tmp_path / "split_0.pyb", ([("10000", False)], [("10001", False)]))
    output = tmp_path / "split.csv"
    output.write_text("mine\n")
    assert main(["import-split", str(split), "--dataset", "ksdd2", "--output", str(output)]) == 2
    assert "exists already" in capsys.readouterr().err and output.read_text() == "mine\n"


def _import(tmp_path: Path, content, dataset: str, *fold: str) -> Path:
    source = _dump(tmp_path / f"{dataset}.pyb", content)
    output = tmp_path / f"{dataset}_split.csv"
    assert (
        main(["import-split", str(source), "--dataset", dataset, *fold, "--output", str(output)])
        == 0
    )
    return output


def test_a_split_of_another_dataset_is_refused_as_a_dagm_split(tmp_path):
    ksdd = _dump(tmp_path / "ksdd.pyb", ([[("kos01", True)]], [[("kos02", False)]]))
    with pytest.raises(DataError, match=r"not a dagm split: train names 'kos01', not an image"):
        published_split(ksdd, "dagm", 1)


def test_an_imported_dagm_split_says_the_class_it_trains(tmp_path, capsys):
    content = ([[("0001.PNG", True)], [("0002.PNG", True)]], [[("0003.PNG", False)]] * 2)
    split = _import(tmp_path, content, "dagm", "--fold", "2")
    assert capsys.readouterr().out.splitlines()[-1] == (
        f"train on it with experiment=paper/dagm data.split_file={split.resolve()} "
        "data.dagm_class=2"
    )


@pytest.mark.parametrize(
    ("name", "dataset", "train", "settings"),
    [
        # the published weak run: without N = 0 the run was refused (null reads as "all")
        ("split_33_0.pyb", "ksdd", [("kos01", False), ("kos02", False)], " data.num_segmented=0"),
        (
            "split_5.pyb",
            "ksdd2",
            [(f"1000{i}", True) for i in range(5)] + [("10005", False)],
            " data.num_segmented=5",
        ),
        # Severstal's training size sets its published epochs: 3000 was taken for any file
        (
            "split_300_10.pyb",
            "severstal",
            [(f"a{i}", i < 12) for i in range(20)],  # its negatives may be marked too
            " data.num_segmented=10 data.train_positives=300",
        ),
        ("renamed.pyb", "ksdd2", [("10000", False)], " data.num_segmented=0"),
        ("renamed.pyb", "ksdd2", [("10000", True)], ""),
    ],
)
def test_an_imported_split_says_the_settings_it_trains_with(
    tmp_path, capsys, name, dataset, train, settings
):
    parts = {"ksdd": 2, "ksdd2": 2, "severstal": 3}[dataset]
    content = ([train], [[]]) if dataset == "ksdd" else (train, *[[]] * (parts - 1))
    source = _dump(tmp_path / name, content)
    output = tmp_path / "split.csv"
    fold = ["--fold", "0"] if dataset == "ksdd" else []
    command = ["import-split", str(source), "--dataset", dataset, *fold, "--output", str(output)]
    assert main(command) == 0
    assert capsys.readouterr().out.splitlines()[-1] == (
        f"train on it with experiment=paper/{dataset} data.split_file={output.resolve()}{settings}"
    )


def test_the_published_all_of_dagm_trains_with_every_positive_it_marks(tmp_path, capsys):
    """DAGM's N_ALL file is split_1000.pyb, above any class's positives: null, not 1000."""
    content = ([[("0001.PNG", True), ("0002.PNG", True)]], [[("0003.PNG", False)]])
    source = _dump(tmp_path / "split_1000.pyb", content)
    output = tmp_path / "split.csv"
    command = ["import-split", str(source), "--dataset", "dagm", "--fold", "1"]
    assert main([*command, "--output", str(output)]) == 0
    assert (
        capsys.readouterr()
        .out.splitlines()[-1]
        .endswith(f"data.split_file={output.resolve()} data.dagm_class=1")
    )


def test_a_ksdd_split_names_folders_and_their_segmented_positives(tmp_path):
    root = make_ksdd(tmp_path / "ksdd", folders=4, parts=3)
    # two folds of a published KSDD split; fold 1 trains on kos01 (segmented) and kos02 and
    # kos04 (weak), and tests on kos03
    content = (
        [[("kos03", True)], [("kos01", True), ("kos02", False), ("kos04", False)]],
        [[("kos01", False)], [("kos03", False)]],
    )
    split = _import(tmp_path, content, "ksdd", "--fold", "1")
    assert split.read_text().splitlines() == [
        "split,sample_id,segmented",
        "train,kos01,1",
        "train,kos02,0",
        "train,kos04,0",
        "test,kos03,0",
    ]
    common = {"layout": "ksdd", "input_channels": 1, "val_fraction": 0, "split_file": str(split)}
    chosen = datamodule_of(root, **common).data_split
    assert {s.group for s in chosen.splits["train"]} == {"kos01", "kos02", "kos04"}
    assert len(chosen.splits["train"]) == 9 and chosen.splits["val"] == []
    assert [s.sample_id for s in chosen.splits["test"]] == [f"kos03_Part{k}" for k in range(3)]
    assert chosen.segmented_ids == {"kos01_Part1"}  # kos01's positive, the file's mark
    again = datamodule_of(root, num_segmented=1, **common).data_split
    assert again.segmented_ids == {"kos01_Part1"}
    with pytest.raises(ConfigError, match=r"num_segmented=2 but split file .* marks 1 training"):
        datamodule_of(root, num_segmented=2, **common)
    (tmp_path / "weak").mkdir()
    weak_content = ([[], [("kos01", False), ("kos02", False)]], [[], [("kos03", False)]])
    weak = _import(tmp_path / "weak", weak_content, "ksdd", "--fold", "1")
    weak_common = {**common, "split_file": str(weak)}
    assert datamodule_of(root, num_segmented=0, **weak_common).data_split.segmented_ids == set()
    with pytest.raises(ConfigError, match="marks none of its 2 training positives segmented"):
        datamodule_of(root, **weak_common)
    # an evaluation on that split trains nothing: no settings follow N there
    evaluation = CrackDataModule.from_config(
        {"root": str(root), "input_height": 64, "input_width": 128, **weak_common}
    )
    evaluation.setup("test")
    assert evaluation.data_split.segmented_ids == set()


def test_a_ksdd_split_may_count_its_n_in_folders_or_in_positives(tmp_path):
    """A KSDD file marks folders; one folder may hold two defective parts, so the file's N
    can count either the folders it marks or the positives they hold."""
    root = make_ksdd(tmp_path / "ksdd", folders=3, parts=3)
    for suffix in (".jpg", "_label.bmp"):  # kos01's Part2 becomes defective as its Part1
        (root / "kos01" / f"Part2{suffix}").write_bytes(
            (root / "kos01" / f"Part1{suffix}").read_bytes()
        )
    content = ([[("kos01", True), ("kos02", False)]], [[("kos03", False)]])
    split = _import(tmp_path, content, "ksdd", "--fold", "0")
    common = {"layout": "ksdd", "input_channels": 1, "val_fraction": 0, "split_file": str(split)}
    for num_segmented in (None, 1, 2):
        chosen = datamodule_of(root, num_segmented=num_segmented, **common).data_split
        assert chosen.segmented_ids == {"kos01_Part1", "kos01_Part2"}
    with pytest.raises(ConfigError, match=r"num_segmented=3 but split file .* marks 2 training"):
        datamodule_of(root, num_segmented=3, **common)


def test_a_dagm_fold_is_its_class_and_keeps_train_and_test(tmp_path):
    root = make_dagm(tmp_path / "dagm", classes=(1, 2), images=4)
    # as published: a list over classes, each a set of (file name, is_segmented)
    folds = [{("0003.PNG", True), ("0001.PNG", False), ("0002.PNG", False)}, {("0001.PNG", True)}]
    content = (folds, [{("0004.PNG", False), ("0001.PNG", False)}, {("0002.PNG", False)}])
    split = _import(tmp_path, content, "dagm", "--fold", "1")  # the paper's --FOLD=1: Class1

    def class1_with(split_file: Path):
        return datamodule_of(
            root,
            layout="dagm",
            dagm_class=1,
            input_channels=1,
            val_fraction=0,
            split_file=str(split_file),
        )

    chosen = class1_with(split).data_split
    train = ["class1_train_0001", "class1_train_0002", "class1_train_0003"]
    assert [s.sample_id for s in chosen.splits["train"]] == train
    assert [s.sample_id for s in chosen.splits["test"]] == ["class1_test_0001", "class1_test_0004"]
    assert chosen.segmented_ids == {"class1_train_0003"}  # 0001 is positive, not segmented
    assert chosen.num_segmented == 1

    # A file imported when DAGM ids did not name their class says how to import it again.
    older = tmp_path / "older.csv"
    older.write_text("split,sample_id,segmented\ntrain,train_0001,1\ntest,test_0001,0\n")
    with pytest.raises(DataError, match=r"DAGM ids name their class now"):
        class1_with(older)
    # The file names repeat in every class: the ids name it, so fold 2 (Class2) is refused
    # against Class1, where it would have trained on Class1's images under Class2's marks.
    (tmp_path / "class2").mkdir()
    other = _import(tmp_path / "class2", content, "dagm", "--fold", "2")
    with pytest.raises(
        DataError,
        match=r"not in the dataset: .*class2_train_0001.* \(they are of class 2: train with "
        r"data.dagm_class=2\)",
    ):
        class1_with(other)


def test_a_split_without_validation_gets_it_carved_from_train(tmp_path):
    root = make_ksdd2_like(tmp_path / "ksdd2", train=10, test=4)
    train = [(f"{i:05d}", i < 3) for i in range(10)]
    split = _import(tmp_path, (train, [(f"{i:05d}", False) for i in range(10, 14)]), "ksdd2")
    datamodule = datamodule_of(root, layout="ksdd2", split_file=str(split), val_fraction=0.2)
    # positives 00000, 00002, ..., 00008 (5), negatives the odd ones (5): 20 % of each
    assert [len(datamodule.data_split.splits[k]) for k in ("train", "val", "test")] == [8, 2, 4]
    # the file's marks stay on those of its segmented samples left in training
    kept = {s.sample_id for s in datamodule.data_split.splits["train"]}
    marked = {"train_00000", "train_00002"} & kept
    assert marked and datamodule.data_split.segmented_ids == marked
    without = datamodule_of(root, layout="ksdd2", split_file=str(split), val_fraction=0)
    assert len(without.data_split.splits["train"]) == 10 and without.data_split.splits["val"] == []
    assert without.data_split.segmented_ids == {"train_00000", "train_00002"}


def test_a_severstal_split_has_its_validation_part(tmp_path):
    content = ([("0a.jpg", True)], [("0b.jpg", False)], [("0c.jpg", False), ("0d.jpg", True)])
    split = _import(tmp_path, content, "severstal")
    assert split.read_text().splitlines()[1:] == ["train,0a,1", "test,0b,0", "val,0c,0", "val,0d,1"]


def test_a_saved_split_keeps_its_segmented_positives(dataset_root, tmp_path):
    first = datamodule_of(dataset_root, num_segmented=3, split_seed=1).data_split
    first.save(tmp_path / "split.csv")
    again = datamodule_of(dataset_root, split_seed=7, split_file=str(tmp_path / "split.csv"))
    assert again.data_split.segmented_ids == first.segmented_ids
    assert len(first.segmented_ids) == 3
