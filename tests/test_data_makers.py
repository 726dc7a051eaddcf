"""The blocks of ``data`` that make the data (synthetic, download, tile): refused with one
line where they cannot work, before a run folder is kept."""

from __future__ import annotations

import inspect

import pytest
from conftest import TINY, one_line_error, run_entry

from crackseg.data.data_settings import (
    DATA_MAKERS,
    SourceSettings,
    check_data_makers,
    data_maker,
)
from crackseg.data.download import prepare_dataset
from crackseg.data.layouts import check_config_data_found
from crackseg.data.synthetic import generate_synthetic_dataset
from crackseg.data.tiles import tile_dataset
from crackseg.errors import ConfigError


def _arguments(function, *left_out: str) -> tuple[str, ...]:
    parameters = inspect.signature(function).parameters.values()
    named = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    return tuple(p.name for p in parameters if p.kind in named and p.name not in left_out)


def test_each_block_takes_the_arguments_of_its_maker():
    assert DATA_MAKERS["synthetic"] == _arguments(generate_synthetic_dataset, "root")
    assert DATA_MAKERS["download"] == _arguments(prepare_dataset, "root")
    assert DATA_MAKERS["tile"] == ("source", *_arguments(tile_dataset, "src", "dst"))


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (
            {"synthetic": {"seed": 0}, "tile": {"sise": 3}},
            "data.synthetic and data.tile both say how to make the data, and only one can: "
            "keep one (data.tile=null)",
        ),
        (
            {"synthetic": {"seed": 0, "foo": 1}},
            "not a data.synthetic setting: data.synthetic.foo (known: num_positives, "
            "num_negatives, height, width, seed)",
        ),
        ({"synthetic": 5}, "data.synthetic must be a mapping of its settings"),
        ({"layout_options": 5}, "data.layout_options must be a mapping of the layout's options"),
        (
            {"tile": {"size": 160}},
            "data.tile.source is not set (the folder of photographs to tile: "
            "data.tile.source=FOLDER)",
        ),
        ({"tile": {"source": "photos", "sise": 96}}, "not a data.tile setting: data.tile.sise"),
        ({"download": {"url": "https://x", "sh256": "ab"}}, "not a data.download setting"),
    ],
    ids=["two makers", "unknown key", "no mapping", "options", "no source", "typo", "download"],
)
def test_a_block_that_cannot_make_the_data_is_refused(data, expected):
    with pytest.raises(ConfigError) as refused:
        check_data_makers(data)
    assert str(refused.value).startswith(expected)
    with pytest.raises(ConfigError):  # as the DataModule's settings are built
        SourceSettings("root", **data)
    with pytest.raises(ConfigError):  # and before the data is looked for
        check_config_data_found({"root": "root", **data})


def test_a_download_block_without_a_url_makes_nothing_and_is_no_second_maker():
    check_data_makers({"download": {"url": None, "sha256": "unpinned"}, "synthetic": {}})
    assert data_maker({"download": {"url": None, "sha256": "unpinned"}, "synthetic": {}}) == (
        "synthetic"
    )
    assert data_maker({"download": {"url": None}, "tile": None}) is None  # read as it lies
    assert data_maker({"download": {"url": "https://example.org/d.zip"}}) == "download"
    assert data_maker({"tile": {"source": "photos"}}) == "tile"
    assert data_maker({}) is None


def test_the_tile_block_takes_the_options_of_its_photographs_layout():
    check_data_makers({"tile": {"source": "photos", "size": 160, "negative_prefix": "no"}})
    check_data_makers({"tile": {"source": "photos", "binarize_threshold": 100}})  # its masks'
    with pytest.raises(ConfigError, match=r"negative_prefix \(of layout crack_segmentation\)"):
        check_data_makers({"tile": {"source": "photos", "sise": 160}})


def test_a_run_adding_a_key_its_maker_does_not_take_is_one_line_and_keeps_no_folder(
    tmp_path, tiny_data_dir
):
    here = tmp_path / "here"  # where the run would make its folder (outputs/runs/...)
    here.mkdir()
    overrides = (*TINY, f"paths.data_dir={tiny_data_dir}", "+data.synthetic.foo=1")
    line = one_line_error(run_entry("train", *overrides, cwd=here))
    assert line.startswith("error: not a data.synthetic setting: data.synthetic.foo")
    assert not list(here.rglob("*"))


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        # experiment=cfd_tiles names its root by the tiles' size
        (("experiment=cfd_tiles", "data.tile=null"), "data.tile=null empties a block"),
        # data=synthetic by its seed, read from its block (${.synthetic.seed})
        (("data.synthetic=null",), "data.synthetic=null empties a block"),
        # a sweep: before any job starts
        (("-m", "seed=0,1", "+data.synthetic.foo=1"), "not a data.synthetic setting"),
    ],
    ids=["absolute", "relative", "sweep"],
)
def test_data_blocks_a_command_cannot_read_are_one_line_and_write_nothing(
    tmp_path, overrides, expected
):
    here = tmp_path / "here"
    here.mkdir()
    line = one_line_error(run_entry("train", *overrides, cwd=here))
    assert line.startswith(f"error: {expected}")
    assert not list(here.rglob("*"))
