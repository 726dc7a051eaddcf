"""The embedded synthetic dataset: deterministic, in the expected layout, thin cracks, fair."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from crackseg.data.synthetic import generate_synthetic_dataset, render_sample
from crackseg.errors import DataError

N = 24  # per class: large enough for the statistics below, small enough to stay fast


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("synth") / "data"
    return generate_synthetic_dataset(root, num_positives=N, num_negatives=N, seed=3)


def _read(root: Path, kind: str, name: str) -> np.ndarray:
    flag = cv2.IMREAD_COLOR if kind == "images" else cv2.IMREAD_UNCHANGED
    array = cv2.imread(str(root / kind / name), flag)
    assert array is not None, name
    return array


def _auc(pos: np.ndarray, neg: np.ndarray) -> float:
    """ROC AUC of 'score higher means positive', by the rank-sum formula (no ties here)."""
    ranks = np.concatenate([pos, neg]).argsort().argsort() + 1
    return (ranks[: len(pos)].sum() - len(pos) * (len(pos) + 1) / 2) / (len(pos) * len(neg))


def test_auc_helper_on_hand_computed_cases():
    assert _auc(np.array([3.0, 4.0]), np.array([1.0, 2.0])) == 1.0
    assert _auc(np.array([1.0, 4.0]), np.array([2.0, 3.0])) == 0.5


def test_layout_names_and_masks(dataset):
    images = sorted(p.name for p in (dataset / "images").iterdir())
    masks = sorted(p.name for p in (dataset / "masks").iterdir())
    expected = sorted(
        [f"crack_{i:05d}.png" for i in range(N)] + [f"noncrack_{i:05d}.png" for i in range(N)]
    )
    assert images == expected and masks == expected
    assert json.loads((dataset / "synthetic.json").read_text())["seed"] == 3
    assert not list(dataset.parent.glob(".*partial*")), "temporary folder left behind"
    for name in expected:
        image, mask = _read(dataset, "images", name), _read(dataset, "masks", name)
        assert image.shape == (128, 128, 3) and image.dtype == np.uint8
        assert mask.shape == (128, 128) and mask.dtype == np.uint8
        assert set(np.unique(mask)) <= {0, 255}
        if name.startswith("noncrack"):
            assert not mask.any(), name


def test_cracks_are_thin_and_sized(dataset):
    kernel = np.ones((11, 11), np.uint8)  # cracks are at most ~10 px wide at 128 px
    kept, widths = [], []
    for i in range(N):
        mask = _read(dataset, "masks", f"crack_{i:05d}.png")
        assert 0.003 < (mask > 0).mean() < 0.15, (i, (mask > 0).mean())
        kept.append(cv2.erode(mask, kernel).sum() / mask.sum())
        # a band w px wide has mean distance-to-background about (w + 2) / 4 over its pixels
        widths.append(4 * cv2.distanceTransform(mask, cv2.DIST_L2, 3)[mask > 0].mean() - 2)
    assert max(kept) < 0.05 and np.mean(kept) < 0.01, kept
    assert 4 < np.median(widths) < 8.5, widths  # wide enough for Dice at 1/8 resolution


def _ring(mask: np.ndarray, outer: int, inner: int) -> np.ndarray:
    """Pixels reached by an outer x outer dilation of the mask but not by an inner x inner one."""
    grow = [cv2.dilate(mask, np.ones((k, k), np.uint8)) > 0 for k in (outer, inner)]
    return grow[0] & ~grow[1]


def test_mask_is_the_dark_crack(dataset):
    """Crack pixels are darker than nearby ones, and the mask ends where the crack does."""
    edge = []
    for i in range(N):
        grey = _read(dataset, "images", f"crack_{i:05d}.png").mean(axis=2)
        mask = _read(dataset, "masks", f"crack_{i:05d}.png")
        rings = (mask > 0, _ring(mask, 3, 1), _ring(mask, 9, 5))
        crack, rim, around = (np.median(grey[r]) for r in rings)
        assert crack < 0.93 * around, i  # darker than its surroundings
        edge.append((rim - crack) / (around - crack))
    # just outside the mask it is already nearly as bright as the surroundings (not too small
    # a mask), but not quite (not too large a mask: there is the anti-aliased rim)
    assert 0.7 < np.median(edge) < 0.95, edge


def _band_pass(grey: np.ndarray) -> np.ndarray:
    """Structures of a few pixels, relative to the image's brightness (lighting removed)."""
    detail = grey - cv2.GaussianBlur(grey, (0, 0), 8)
    return cv2.GaussianBlur(detail, (0, 0), 1.5) / np.median(grey)


def _longest_dark_structure(grey: np.ndarray) -> int:
    """Bounding-box extent (px) of the largest clearly dark connected structure."""
    dark = (_band_pass(grey) < -0.12).astype(np.uint8)
    _, _, stats, _ = cv2.connectedComponentsWithStats(dark)
    return max((max(w, h) for _, _, w, h, _ in stats[1:]), default=0)


def test_negatives_have_distractors_and_darkness_does_not_separate(dataset):
    def grey(kind: str, i: int) -> np.ndarray:
        return _read(dataset, "images", f"{kind}_{i:05d}.png").mean(axis=2).astype(np.float32)

    neg = [grey("noncrack", i) for i in range(N)]
    pos = [grey("crack", i) for i in range(N)]
    assert min(_band_pass(g).std() for g in neg) > 0.02  # textured, not flat
    # long dark lines (joints) on some negatives; plain texture never gives such structures
    long_dark = [_longest_dark_structure(g) >= 40 for g in neg]
    assert 0.1 <= np.mean(long_dark) < 0.8, long_dark
    features = {
        "mean": np.mean,
        "1st percentile": lambda g: np.percentile(g, 1),
        "1st percentile / median": lambda g: np.percentile(g, 1) / np.median(g),
    }
    for name, feature in features.items():
        darkness_pos = -np.array([feature(g) for g in pos])  # darker means "crack"
        darkness_neg = -np.array([feature(g) for g in neg])
        assert _auc(darkness_pos, darkness_neg) < 0.9, name


def test_same_seed_same_bytes_other_seed_other_images(tmp_path, dataset):
    again = generate_synthetic_dataset(tmp_path / "a", num_positives=N, num_negatives=N, seed=3)
    other = generate_synthetic_dataset(tmp_path / "b", num_positives=2, num_negatives=2, seed=4)
    for kind in ("images", "masks"):
        for path in (dataset / kind).iterdir():
            assert (again / kind / path.name).read_bytes() == path.read_bytes(), path.name
    for name in ("crack_00000.png", "crack_00001.png", "noncrack_00000.png"):
        assert not np.array_equal(_read(other, "images", name), _read(dataset, "images", name))


def test_sample_does_not_depend_on_set_size(tmp_path, dataset):
    small = generate_synthetic_dataset(tmp_path / "s", num_positives=2, num_negatives=1, seed=3)
    for name in ("crack_00001.png", "noncrack_00000.png"):
        assert (small / "images" / name).read_bytes() == (dataset / "images" / name).read_bytes()


def test_second_call_does_not_rewrite_and_other_parameters_raise(tmp_path, monkeypatch):
    import crackseg.data.synthetic as synthetic

    root = generate_synthetic_dataset(tmp_path / "d", num_positives=2, num_negatives=2, seed=1)
    before = {p: p.stat().st_mtime_ns for p in root.rglob("*")}
    monkeypatch.setattr(synthetic, "render_sample", None)  # a second generation would crash
    assert generate_synthetic_dataset(root, num_positives=2, num_negatives=2, seed=1) == root
    assert {p: p.stat().st_mtime_ns for p in root.rglob("*")} == before
    with pytest.raises(DataError, match="delete it or pick another root"):
        generate_synthetic_dataset(root, num_positives=2, num_negatives=2, seed=2)
    with pytest.raises(DataError):
        generate_synthetic_dataset(root, num_positives=3, num_negatives=2, seed=1)
    assert {p: p.stat().st_mtime_ns for p in root.rglob("*")} == before


def test_foreign_folder_is_not_overwritten(tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(DataError, match="not a synthetic dataset"):
        generate_synthetic_dataset(tmp_path / "mine", num_positives=1, num_negatives=1)
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"


def test_empty_folder_is_filled(tmp_path):
    (tmp_path / "empty").mkdir()
    root = generate_synthetic_dataset(tmp_path / "empty", num_positives=1, num_negatives=1)
    assert (root / "synthetic.json").is_file() and len(list((root / "images").iterdir())) == 2


def test_interrupted_generation_leaves_nothing_that_looks_complete(tmp_path, monkeypatch):
    import crackseg.data.synthetic as synthetic

    calls = []

    def failing(rng, height, width, positive):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return render_sample(rng, height, width, positive)

    monkeypatch.setattr(synthetic, "render_sample", failing)
    with pytest.raises(KeyboardInterrupt):
        synthetic.generate_synthetic_dataset(tmp_path / "x", num_positives=4, num_negatives=4)
    assert not (tmp_path / "x").exists()
    assert list(tmp_path.iterdir()) == []


def test_non_square_size(tmp_path):
    root = generate_synthetic_dataset(tmp_path / "r", 3, 2, height=64, width=96, seed=5)
    for path in (root / "images").iterdir():
        assert _read(root, "images", path.name).shape == (64, 96, 3)
        mask = _read(root, "masks", path.name)
        assert mask.shape == (64, 96)
        assert mask.any() == path.name.startswith("crack")


def test_render_sample_directly():
    image, mask = render_sample(np.random.default_rng(0), 48, 80, positive=True)
    assert image.shape == (48, 80, 3) and image.dtype == np.uint8
    assert mask.shape == (48, 80) and mask.dtype == np.uint8 and mask.max() == 255
    _, mask = render_sample(np.random.default_rng(0), 48, 80, positive=False)
    assert not mask.any()


def test_a_generated_set_is_as_readable_as_any_folder_made_here(tmp_path):
    """Built in a temporary folder (private when made) and renamed into place: the set gets
    the umask's permissions, so a shared data folder stays readable to others."""
    from crackseg import atomic

    root = generate_synthetic_dataset(tmp_path / "set", 1, 1, 16, 16, seed=0)
    assert root.stat().st_mode & 0o777 == 0o777 & ~atomic._UMASK
    plain = tmp_path / "plain"
    plain.mkdir()
    assert root.stat().st_mode == plain.stat().st_mode
