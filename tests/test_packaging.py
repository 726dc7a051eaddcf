"""crackseg installed from its wheel: the configs travel with it, a run needs no source tree."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import tomllib
from pathlib import Path

import setuptools
from conftest import METRIC_KEYS, REPO, TINY
from omegaconf import OmegaConf


def test_pyproject_lists_every_package() -> None:
    listed = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    found = setuptools.find_packages(str(REPO), include=["crackseg*"])
    assert set(listed["packages"]) == {*found, "crackseg.conf"}
    assert listed["package-dir"] == {"crackseg.conf": "conf"}


def _run(*command: str | Path, **kwargs) -> subprocess.CompletedProcess:
    result = subprocess.run(
        [str(c) for c in command], capture_output=True, text=True, timeout=300, **kwargs
    )
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    return result


def _venv_with_our_dependencies(venv: Path) -> Path:
    """A fresh environment that sees this one's libraries (torch...) but not its crackseg.

    A ``.pth`` line puts this environment's site-packages after the new one's, so the
    dependencies need no download; crackseg itself (installed editable here) is not seen,
    as the editable finder is only set up by this environment's own .pth files.
    """
    _run(sys.executable, "-m", "venv", "--without-pip", venv)
    python = venv / "bin" / "python"
    site = _run(python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])")
    Path(site.stdout.strip(), "dependencies.pth").write_text(sysconfig.get_paths()["purelib"])
    return python


def test_wheel_trains_from_an_empty_folder(tmp_path: Path) -> None:
    # Build from a copy: building writes build/ and crackseg.egg-info beside the sources.
    source = tmp_path / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, source / name)
    for name in ("crackseg", "conf"):
        shutil.copytree(REPO / name, source / name, ignore=shutil.ignore_patterns("__pycache__"))
    dist = tmp_path / "dist"
    pip = (sys.executable, "-m", "pip")
    _run(*pip, "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q", "-w", dist, source)
    (wheel,) = dist.glob("crackseg-*.whl")

    # The folder holding the environment is a git repository of its own: a run must not
    # report its commit as crackseg's.
    base = tmp_path / "project"
    base.mkdir()
    _run("git", "init", "-q", base)
    git = ("git", "-C", base, "-c", "user.name=t", "-c", "user.email=t@t")
    _run(*git, "commit", "-q", "--allow-empty", "-m", "start")
    python = _venv_with_our_dependencies(base / ".venv")
    _run(python, "-m", "pip", "install", "--no-deps", "--no-index", "--ignore-installed", wheel)

    # A user's own experiment, found through Hydra's search path as the README shows.
    work = base / "work"
    experiment = work / "my_configs" / "experiment" / "tiny.yaml"
    experiment.parent.mkdir(parents=True)
    values = [o for o in TINY if not o.startswith("model=")]  # a group: chosen in defaults
    settings = OmegaConf.from_dotlist([*values, "trainer.max_epochs=1", "run_name=my_tiny_run"])
    defaults = "defaults:\n  - override /model: segdec_small\n"
    experiment.write_text("# @package _global_\n" + defaults + OmegaConf.to_yaml(settings))
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "CRACKSEG_DATA_DIR")}
    train = base / ".venv" / "bin" / "crackseg-train"
    search_path = f"hydra.searchpath=[file://{work / 'my_configs'}]"
    _run(train, search_path, "experiment=tiny", cwd=work, env={**env, "OMP_NUM_THREADS": "1"})

    (run_dir,) = (work / "outputs" / "runs" / "my_tiny_run").glob("*")
    assert set(json.loads((run_dir / "metrics.json").read_text())) >= METRIC_KEYS
    hydra_cfg = (run_dir / ".hydra" / "hydra.yaml").read_text()
    installed_conf = next((base / ".venv").rglob("site-packages/crackseg/conf"))
    assert f"path: {installed_conf}" in hydra_cfg and str(REPO) not in hydra_cfg
    info = json.loads((run_dir / "run_info.json").read_text())
    assert info["git_commit"] is None and info["crackseg_version"]
