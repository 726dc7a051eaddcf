"""The summary table of a sweep: every job, and mean ± std over seeds for each setting.

A sweep is judged by its table, so no job may silently vanish from it: jobs that failed
are listed with their error line, and every other job that did not finish (``running``:
still running, or killed; ``interrupted``: stopped by a signal; no status at all) is
counted as unfinished, its own status shown. The swept values are read back from each job's
``.hydra/overrides.yaml``, which is what tells the jobs apart; this works for a multirun
root and for any folder of single runs alike.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import logging
import math
import os
import re
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import yaml
from hydra.errors import HydraException
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from crackseg.atomic import atomic_write_csv, atomic_write_text
from crackseg.error_lines import one_line
from crackseg.errors import CracksegError, plural
from crackseg.markdown import markdown_table
from crackseg.run_files import METRICS_FILE, STATUS_FILE, SWEEP_FILE
from crackseg.runs.hydra_run import override_key, saved_overrides, started_by
from crackseg.runs.job_names import BASIC_SWEEPER, grid_jobs, job_settings, swept_keys
from crackseg.runs.ownership import is_rank_zero
from crackseg.runs.status import load_json_object, load_status
from crackseg.setting_rules import OneLineParser, is_number
from crackseg.sweep.published import add_table4_labels, departures

log = logging.getLogger(__name__)

CSV_NAME = "summary.csv"
MD_NAME = "summary.md"
#: Columns every row has before the swept values.
BASE_COLUMNS = ("job", "status", "error", "seed")
#: The swept keys that are folds: K-fold of any layout, and DAGM's classes (the paper's
#: results are means over them, as over seeds).
FOLD_KEYS = ("data.fold", "data.dagm_class")
#: Per-job metrics (from metrics.json, or the copy in status.json).
METRICS = (
    "image_auc",
    "image_ap",
    "image_ap_trapezoid",
    "tp",
    "fp",
    "tn",
    "fn",
    "dice_mean",
    "iou_mean",
    "best_val_image_ap",
    "num_segmented",
)
#: Per-job metrics of a sweep of predictions (``crackseg-predict -m``, over its overlap or
#: thresholds): the images predicted and left unread, the cracks found, the mean Dice
#: against reference masks.
PREDICTION_METRICS = ("images", "unreadable", "cracks", "dice_mean")
ALL_METRICS = (*METRICS, *(m for m in PREDICTION_METRICS if m not in METRICS))
#: How summary.md names a status: a job without ``status.json`` (still running, or killed)
#: is ``unfinished`` in summary.csv.
NAMED = {"unfinished": "without a status"}
#: What :func:`_config_value` finds at a key a config does not hold.
_ABSENT = object()
#: Metrics averaged over seeds in the grouped table (``image_ap_trapezoid``: the AP of the
#: published code and the paper's numbers, docs/protocol.md).
GROUPED_METRICS = ("image_auc", "image_ap", "image_ap_trapezoid", "dice_mean", "iou_mean")
#: Those of a sweep of predictions.
GROUPED_PREDICTION_METRICS = ("cracks", "dice_mean")

#: The multiruns this process ran to their end: (sweep folder, jobs, jobs of this run that
#: failed, jobs of this run that did not finish otherwise), the counts None where the jobs'
#: status could not be read; crackseg.cli ends the command non-zero unless every job of
#: this run finished. A job an earlier run left in the folder (one no longer in the grid,
#: failed) is in the summary but does not fail this run.
ended_sweeps: list[tuple[Path, int | None, int | None, int | None]] = []
#: The sweep folders of the multiruns this process started, in order, and when each started
#: (a whole second earlier: file times may be kept to the second).
started_sweeps: dict[Path, float] = {}


def status_counts(rows: list[dict[str, Any]]) -> dict[str, int]:
    """How many jobs finished, failed, and did not finish otherwise (any other status)."""
    finished = sum(r["status"] == "finished" for r in rows)
    failed = sum(r["status"] == "failed" for r in rows)
    return {"finished": finished, "failed": failed, "unfinished": len(rows) - finished - failed}


def find_job_dirs(root: str | Path) -> list[Path]:
    """Every run folder (one with a ``.hydra/`` inside) under ``root``, in job order. Hidden
    folders and a run's own are not searched (no run lies inside another's folder, and its
    checkpoints, logs and predictions can be many)."""
    root = Path(root)
    found = []
    for folder, subfolders, _ in os.walk(root):
        if ".hydra" in subfolders:
            found.append(Path(folder))
            subfolders.clear()
        else:
            subfolders[:] = [name for name in subfolders if not name.startswith(".")]
    return sorted(found, key=lambda p: _natural_key(p.relative_to(root).as_posix()))


def _natural_key(text: str) -> list[Any]:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", text)]


def _read_overrides(job: Path) -> dict[str, str]:
    """``key -> value`` of the overrides a job ran with, as a sweep run again compares them
    (:func:`crackseg.runs.job_names.job_settings`): in Hydra's spelling (``1e-2`` and
    ``0.01`` are one value), without those a run again may change (``data.num_workers``,
    ``resume``), which tell no setting apart."""
    saved = saved_overrides(job)
    try:
        return job_settings(saved) if saved is not None else {}
    except HydraException:
        return {}


@functools.lru_cache(maxsize=512)
def _saved_config(path: Path, written_ns: int) -> DictConfig:
    """A job's ``.hydra/config.yaml``, read once for all its keys (a summary reads the seed
    and every swept key of every job); ``written_ns``: a folder written again is read again."""
    import crackseg.runs.resolvers  # noqa: F401  (the rules' resolvers, registered on import)

    return OmegaConf.load(path)


def _config_value(job: Path, key: str) -> str:
    """A key of the job's composed config, spelt as :func:`_read_overrides` spells the value
    of an override (``True``, ``1``), so that a job that took a value from its config and one
    that was given the same value on the command line are one setting; a value set by a rule
    (``${crackseg.any_segmented:...}``) is resolved, one that needs Hydra's run is left as
    written."""
    path = job / ".hydra" / "config.yaml"
    try:
        config = _saved_config(path, path.stat().st_mtime_ns)
    except (OSError, yaml.YAMLError, OmegaConfBaseException):
        return ""
    try:
        node = OmegaConf.select(config, key, default=_ABSENT)
    except OmegaConfBaseException:  # a value made in Hydra's run (${hydra:...}): as written
        node = OmegaConf.to_container(config, resolve=False)
        for part in key.split("."):
            node = node.get(part, _ABSENT) if isinstance(node, dict) else _ABSENT
    if node is _ABSENT or isinstance(node, DictConfig | ListConfig | dict | list):
        return ""
    text = yaml.safe_dump(node, default_flow_style=True).strip().removesuffix("...").strip()
    try:
        return job_settings([f"{key}={text}"]).get(key, text)
    except HydraException:
        return text


def _job_state(job: Path) -> tuple[str, str, dict[str, Any]]:
    """(status, error line, metrics) of one job folder."""
    try:
        status = load_status(job)
    except (OSError, ValueError) as error:
        return "failed", f"unreadable {STATUS_FILE}: {error}", {}
    no_metrics = f"finished without {METRICS_FILE}"
    try:
        metrics = load_json_object(job / METRICS_FILE)
    except (OSError, ValueError) as error:
        metrics, no_metrics = None, f"unreadable {METRICS_FILE}: {error}"
    if status is None:
        if metrics is not None:
            return "finished", "", metrics
        return "unfinished", f"no {STATUS_FILE} (still running, or killed)", {}
    state = str(status.get("status", "unfinished"))
    error = str(status.get("error", "") or "")
    if metrics is None:
        metrics = status.get("metrics") or {}
        if not isinstance(metrics, dict):
            return "failed", f"unreadable metrics in {STATUS_FILE}", {}
        if state == "finished" and not metrics:
            return "failed", no_metrics, {}
    return state, error, metrics


def _last_sweep(root: Path) -> tuple[list[str], dict[str, Any], str] | None:
    """The command-line overrides, sweeper params and sweeper of the last run of the sweep
    in ``root`` (its ``multirun.yaml``); None where there is none that can be read."""
    try:
        hydra = (yaml.safe_load((root / SWEEP_FILE).read_text()) or {})["hydra"]
        sweeper = hydra.get("sweeper") or {}
        task = [str(o) for o in (hydra.get("overrides") or {}).get("task") or []]
        params = {str(k): v for k, v in (sweeper.get("params") or {}).items()}
        return task, params, str(sweeper.get("_target_", ""))
    except (OSError, yaml.YAMLError, KeyError, AttributeError, TypeError):
        return None


def last_grid(root: Path) -> list[dict[str, str]] | None:
    """The settings of every job of the grid of the sweep's last run; None where the grid is
    not known (another sweeper than Hydra's basic one, a glob)."""
    last = _last_sweep(root)
    if last is None or last[2] != BASIC_SWEEPER:
        return None
    return grid_jobs(last[0], last[1])


def grid_not_started(root: Path, rows: list[dict[str, Any]]) -> list[str]:
    """The jobs of the grid of the sweep's last run that have no folder under ``root`` (a
    sweep stopped or killed before them), as ``key=value,...`` of what tells them apart;
    none where the grid is not known (another sweeper than Hydra's basic one, a glob)."""
    grid = last_grid(root)
    if grid is None:
        return []
    held = {tuple(sorted(_read_overrides(root / row["job"]).items())) for row in rows}
    swept = (
        sorted(key for key in grid[0] if len({job.get(key) for job in grid}) > 1) if grid else []
    )
    return [
        ",".join(f"{key}={job[key]}" for key in swept) or "the one job"
        for job in grid
        if tuple(sorted(job.items())) not in held
    ]


def _varying_keys(root: Path, overrides: list[dict[str, str]]) -> list[str]:
    """The keys the last run of the sweep swept (its sweeper's params, then the sweeps of
    its command line), then every other key whose value differs by job."""
    keys: list[str] = []
    last = _last_sweep(root)
    if last is not None:
        task, params, _ = last
        declared = [override_key(k) for k in params]  # +key: key, as overrides
        with contextlib.suppress(HydraException):
            typed = swept_keys(task, {})
            declared += [override_key(o) for o in task if override_key(o) in typed]
        keys.extend(dict.fromkeys(declared))
    seen: dict[str, set[str | None]] = {}
    for job in overrides:
        for key in job:
            seen.setdefault(key, set())
    for key in seen:
        seen[key] = {job.get(key) for job in overrides}
        if len(seen[key]) > 1 and key not in keys:
            keys.append(key)
    return [k for k in keys if k != "seed"]


def collect_runs(root: str | Path) -> list[dict[str, Any]]:
    """One row per run folder under ``root``: job, status, error, seed, swept values, metrics.

    Swept values are strings as the overrides wrote them (``1``, ``null``, ``true``); metrics
    are numbers or None (unfinished jobs, or AUC/AP undefined on a one-class split).
    """
    root = Path(root)
    jobs = _runs_of_one_command(root, find_job_dirs(root))
    command = (started_by(jobs[0]) or "train") if jobs else "train"
    # (a training whose job is named otherwise, hydra.job.name=NAME, is a training's)
    names = {"predict": PREDICTION_METRICS, "export": ()}.get(command, METRICS)
    overrides = [_read_overrides(job) for job in jobs]
    swept = _varying_keys(root, overrides)
    rows = []
    for job, job_overrides in zip(jobs, overrides, strict=True):
        status, error, metrics = _job_state(job)
        rel = job.relative_to(root).as_posix()
        row: dict[str, Any] = {
            "job": job.name if rel == "." else rel,
            "status": status,
            "error": error,
            "seed": job_overrides.get("seed") or _config_value(job, "seed"),
        }
        for key in swept:
            value = job_overrides.get(key)
            row[key] = value if value is not None else _config_value(job, key)
        for name in names:
            row[name] = metrics.get(name)
        rows.append(row)
    return rows


def _runs_of_one_command(root: Path, jobs: list[Path]) -> list[Path]:
    """The trainings among ``jobs`` where there are any, the others left out (logged): an
    evaluation's or a prediction's config holds its own command's settings, not those of
    the weights it used, so beside trainings its row would compare what it never ran."""
    trainings = [job for job in jobs if (started_by(job) or "train") == "train"]
    if not trainings or len(trainings) == len(jobs):
        return jobs
    others = [job.relative_to(root).as_posix() for job in jobs if job not in trainings]
    log.warning(
        "left out %s of other commands than crackseg-train under %s: %s",
        plural(len(others), "folder"),
        root,
        ", ".join(others[:5]),
    )
    return trainings


def swept_columns(rows: list[dict[str, Any]]) -> list[str]:
    """The swept keys of rows made by ``collect_runs``."""
    if not rows:
        return []
    return [k for k in rows[0] if k not in BASE_COLUMNS and k not in ALL_METRICS]


def metric_columns(rows: list[dict[str, Any]]) -> tuple[list[str], tuple[str, ...]]:
    """The metrics of rows made by ``collect_runs`` (a training's or evaluation's, or a
    prediction's), and those the grouped table averages."""
    shown = [k for k in rows[0] if k in ALL_METRICS] if rows else list(METRICS)
    grouped = GROUPED_METRICS if "image_auc" in shown else GROUPED_PREDICTION_METRICS
    return shown, tuple(m for m in grouped if m in shown)


def repeated_jobs(rows: list[dict[str, Any]]) -> dict[str, str]:
    """Finished jobs that ran a setting and seed a finished job before them in job order ran
    too (the grid changed between runs: ``seed`` swept since, a default typed since), each
    with that job, the one counted. Means, pooled folds and figures count the pair once."""
    keys = swept_columns(rows)
    first: dict[tuple[str, ...], str] = {}
    repeated = {}
    for row in rows:
        if row["status"] != "finished":
            continue
        setting = (*(str(row[k]) for k in keys), str(row["seed"]))
        if setting in first:
            repeated[row["job"]] = first[setting]
        else:
            first[setting] = row["job"]
    return repeated


def group_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean and sample std over seeds of each setting of the swept values (finished jobs).

    Each group has the swept values, ``n`` (finished jobs, a repeated one once:
    :func:`repeated_jobs`), ``not_finished`` (the others: failed, running, interrupted) and,
    per metric, ``<metric>_mean``, ``<metric>_std`` (None where undefined) and ``<metric>``
    formatted as ``mean ± std``.
    """
    keys = swept_columns(rows)
    repeated = repeated_jobs(rows)
    groups: dict[tuple[str, ...], list[dict[str, Any]]] = {}
    for row in rows:
        if row["job"] in repeated:
            continue
        groups.setdefault(tuple(str(row[k]) for k in keys), []).append(row)
    out = []
    for setting, members in groups.items():
        finished = [r for r in members if r["status"] == "finished"]
        group: dict[str, Any] = dict(zip(keys, setting, strict=True))
        group["n"] = len(finished)
        group["not_finished"] = len(members) - len(finished)  # failed, running, interrupted
        segmented = [r["num_segmented"] for r in finished if is_number(r.get("num_segmented"))]
        group["segmented"] = round(statistics.fmean(segmented)) if segmented else None
        for name in metric_columns(rows)[1]:
            mean, std = mean_std([r[name] for r in finished])
            group[f"{name}_mean"], group[f"{name}_std"] = mean, std
            group[name] = format_mean_std(mean, std)
        out.append(group)
    return out


def mean_std(values: list[Any]) -> tuple[float | None, float | None]:
    """The mean and sample standard deviation of the finite numbers among ``values`` (None
    where there are too few: none for the mean, one for the deviation)."""
    numbers = [float(v) for v in values if is_number(v)]
    mean = statistics.fmean(numbers) if numbers else None
    return mean, statistics.stdev(numbers) if len(numbers) > 1 else None


def format_mean_std(mean: float | None, std: float | None) -> str:
    """``0.9631 ± 0.0030``, the mean alone without a deviation, ``n/a`` without a mean."""
    if mean is None:
        return "n/a"
    return f"{mean:.4f}" if std is None else f"{mean:.4f} ± {std:.4f}"


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value)


def _md_table(columns: list[str], rows: list[list[Any]]) -> list[str]:
    """The summary's tables: numbers to 4 decimals, an empty cell as a dash."""
    return markdown_table(columns, ([_cell(v) or "–" for v in row] for row in rows))


def write_summary(
    root: str | Path, rows: list[dict[str, Any]] | None = None, out: str | Path | None = None
) -> tuple[Path, Path]:
    """Write ``summary.csv`` (one row per job) and ``summary.md`` (jobs, groups, failures)
    from ``rows`` (``collect_runs(root)``, read here unless given), with the figures and
    ``folds.csv``, into ``out`` (made where missing; the sweep folder ``root`` by default)."""
    # The figures and the pooled folds need matplotlib and torchmetrics (a second or two to
    # import): imported when a summary is written, not by every command line (crackseg.cli).
    from crackseg.sweep.curves import NUM_SEGMENTED, write_sweep_figures
    from crackseg.sweep.folds import write_pooled_folds

    root = Path(root)
    rows = collect_runs(root) if rows is None else rows
    out = root if out is None else Path(out)
    out.mkdir(parents=True, exist_ok=True)
    keys = swept_columns(rows)
    metrics, grouped = metric_columns(rows)
    columns = [*BASE_COLUMNS, *keys, *metrics]
    csv_path = out / CSV_NAME
    atomic_write_csv(
        csv_path, columns, (["" if row.get(c) is None else row[c] for c in columns] for row in rows)
    )

    counts = status_counts(rows)
    others = sorted({r["status"] for r in rows} - {"finished", "failed"})
    detail = ", ".join(f"{sum(r['status'] == s for r in rows)} {NAMED.get(s, s)}" for s in others)
    seeds = sorted({str(r["seed"]) for r in rows if r["seed"] not in (None, "")}, key=_natural_key)
    swept_text = ", ".join(f"`{k}`" for k in keys) or "nothing (one setting)"
    seeds_text = f"; seeds: {', '.join(seeds)}" if seeds else ""
    lines = [
        f"# Sweep summary: {root.resolve().name}",
        "",
        f"{plural(len(rows), 'job')}: {counts['finished']} finished, {counts['failed']} failed, "
        f"{counts['unfinished']} unfinished{f' ({detail})' if detail else ''}. "
        f"Swept: {swept_text}{seeds_text}.",
    ]
    if not_started := grid_not_started(root, rows):
        shown = ", ".join(f"`{job}`" for job in not_started[:10])
        more = f" and {len(not_started) - 10} more" if len(not_started) > 10 else ""
        lines += [
            "",
            f"Not started: {plural(len(not_started), 'job')} of the grid of the sweep's last "
            f"run, without a folder (the sweep stopped or killed first, or waiting in a "
            f"cluster's queue): {shown}{more}.",
        ]
    lines += [
        "",
        f"## By setting (mean ± std{' over seeds' if seeds else ''}, finished jobs)",
        "",
    ]
    groups = group_rows(rows)
    shows_segmented = NUM_SEGMENTED in keys
    labels = add_table4_labels(groups, keys)  # the paper's Table 4 row a setting stands for
    segmented = ["segmented"] if shows_segmented else []
    group_columns = [*keys, *labels, *segmented, "n", "not_finished"]
    group_columns += list(grouped)
    lines += _md_table(group_columns, [[g[c] for c in group_columns] for g in groups])
    repeated = repeated_jobs(rows)
    counted = [r for r in rows if r["job"] not in repeated]
    # folds.csv: the folds' test scores pooled
    lines += write_pooled_folds(root, counted, keys, out)
    lines += departures(root, rows)  # weak runs not set as the published ones
    figures = write_sweep_figures(out, counted, keys) if "image_ap" in metrics else []
    if figures:
        lines += ["", "## Figures", ""]
        lines += [f"![{path.stem}]({path.name})" for path in figures]
    lines += ["", "## Jobs", ""]
    job_columns = ["job", "status", *(["seed"] if seeds else []), *keys, *metrics]
    lines += _md_table(job_columns, [[r[c] for c in job_columns] for r in rows])
    if repeated:
        lines += ["", "## Repeated jobs", ""]
        lines += [
            f"- `{job}` ran the setting and seed of `{first}` too (the grid changed "
            f"between runs of the sweep): counted once, as `{first}`"
            for job, first in repeated.items()
        ]
    problems = [r for r in rows if r["status"] != "finished"]
    if problems:
        lines += ["", "## Failed and unfinished jobs", ""]
        lines += [
            f"- `{r['job']}` ({NAMED.get(r['status'], r['status'])}): "
            f"{r['error'] or 'no error recorded'}"
            for r in problems
        ]
    md_path = out / MD_NAME
    atomic_write_text(md_path, "\n".join(lines) + "\n")
    log.info("sweep summary of %d jobs written to %s", len(rows), md_path)
    return csv_path, md_path


class SummaryCallback(Callback):
    """Hydra callback: write the summary at the sweep folder when a multirun ends, and
    record how many of its jobs did not finish (:data:`ended_sweeps`). Not in the other
    processes of DDP jobs, which Lightning starts with the sweep's command line: they run
    the sweep in step with the first, whose folders they leave to it."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        started_sweeps[Path(str(config.hydra.sweep.dir))] = math.floor(time.time()) - 1

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        if is_rank_zero():
            end_sweep(Path(str(config.hydra.sweep.dir)))


def end_sweep(sweep_dir: Path) -> None:
    """Write the summary at ``sweep_dir`` and record how many of the jobs this run ran did
    not finish (:data:`ended_sweeps`)."""
    try:
        rows = collect_runs(sweep_dir)
        since = started_sweeps.get(sweep_dir)
        ran = [r for r in rows if since is None or _written_since(sweep_dir / r["job"], since)]
        counts = status_counts(ran)
    except Exception:  # unknown is not success: the command still ends non-zero
        log.exception("could not read the status of the jobs in %s", sweep_dir)
        ended_sweeps.append((sweep_dir, None, None, None))
        return
    ended_sweeps.append((sweep_dir, len(rows), counts["failed"], counts["unfinished"]))
    try:
        write_summary(sweep_dir, rows)
    except Exception:  # the sweep's results are on disk; a summary bug must not hide them
        log.exception("could not write the sweep summary in %s", sweep_dir)


def _written_since(job: Path, since: float) -> bool:
    """Whether this run wrote the job's status (or, before any status, its ``.hydra/``)."""
    for path in (job / STATUS_FILE, job / ".hydra"):
        if path.exists():
            return path.stat().st_mtime >= since
    return True


def sweep_to_compare(given: str, project: Path) -> Path:
    """The sweep folder notebooks/compare_runs.ipynb reads: ``given`` (its
    CRACKSEG_SWEEP_DIR; a relative one not found from here is taken from ``project``, the
    folder the commands run in), else the multirun under ``project``'s
    ``outputs/multiruns`` launched last (its ``multirun.yaml``, which Hydra writes as it
    launches; the folder's own time changes as a summary is written into it) that holds a
    job (a DDP sweep's other processes leave one without). FileNotFoundError where there is
    none, ValueError for one run's own folder."""
    if given:
        folder = Path(given).expanduser()
        if not folder.is_dir() and not folder.is_absolute():
            folder = project / folder
        if not folder.is_dir():
            raise FileNotFoundError(f"CRACKSEG_SWEEP_DIR={given}: no such folder")
        refuse_one_runs_folder(folder, f"CRACKSEG_SWEEP_DIR={given}")
        if not find_job_dirs(folder):
            raise FileNotFoundError(f"CRACKSEG_SWEEP_DIR={given}: no job of a sweep in {folder}")
        return folder
    multiruns = project / "outputs" / "multiruns"
    launched = list(multiruns.glob("*/*/multirun.yaml"))
    launched = [f for f in launched if any(p.is_dir() for p in f.parent.glob("*/.hydra"))]
    if not launched:
        raise FileNotFoundError(f"no multirun under {multiruns}: set CRACKSEG_SWEEP_DIR")
    return max(launched, key=lambda file: file.stat().st_mtime).parent


def refuse_one_runs_folder(folder: Path, named: str) -> None:
    """A summary compares runs, and its files would go into a run's own folder, which its
    run wrote (``training_curves.png``) and no other command writes again: ValueError."""
    if (folder / ".hydra").is_dir():
        raise ValueError(
            f"{named} is one run's folder, not a folder of runs: name the folder that holds "
            f"it ({folder.resolve().parent})"
        )


#: The errors of a folder one may not write into (another user's, a read-only mount).
NOT_WRITABLE = (errno.EACCES, errno.EPERM, errno.EROFS)


def write_summary_to_compare(sweep: Path, project: Path) -> Path:
    """Write the summary of ``sweep`` again for notebooks/compare_runs.ipynb, so that it
    counts every job the folder holds now (a sweep stopped, run again), and return the
    folder it went to, where the notebook's figures go too: the sweep's own, or where that
    may only be read, ``outputs/compare/<sweep>/<time>`` under ``project``."""
    try:
        return write_summary(sweep)[0].parent
    except OSError as error:
        if error.errno not in NOT_WRITABLE:
            raise
    out = project / "outputs" / "compare" / sweep.parent.name / sweep.name
    log.warning("%s cannot be written: its summary and figures go to %s", sweep, out)
    return write_summary(sweep, out=out)[0].parent


def main(argv: list[str] | None = None) -> int:
    """``crackseg-summary FOLDER``: (re)write summary.csv and summary.md of a sweep folder.

    A mistake (no folder, a bad option, a folder holding no runs) is one ``error:`` line
    and exit 2, as for the other commands.
    """
    parser = OneLineParser(
        prog="crackseg-summary",
        description="Summarise the runs under a multirun folder (or any folder of runs).",
    )
    parser.add_argument("folder", help="e.g. outputs/multiruns/sweep_dilate/<time>")
    parser.add_argument(
        "--out",
        metavar="DIR",
        help="write the summary, folds.csv and the figures there (default: FOLDER itself; "
        "for a sweep folder one may only read)",
    )
    try:
        args = parser.parse_args(argv)
        root = Path(args.folder).expanduser()
        if not root.is_dir():
            raise ValueError(f"{root} is not a folder")
        refuse_one_runs_folder(root, str(root))
        if not find_job_dirs(root):
            raise ValueError(f"no run folders (with a .hydra/ inside) under {root}")
        out = None if args.out is None else Path(args.out).expanduser()
        if out is not None and out.exists() and not out.is_dir():
            raise ValueError(f"--out {out} is not a folder")
        csv_path, md_path = write_summary(root, out=out)
    except (OSError, ValueError, CracksegError) as error:
        print(f"error: {one_line(error)}", file=sys.stderr)
        return 2
    print(md_path.read_text(), end="")
    print(f"written: {csv_path} and {md_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
