"""The names of what a run folder holds (docs/DESIGN.md, "A run folder"), in one place for
what writes them, what reads them (sweep summaries, resumption) and the check that a folder
without a status holds none of them (crackseg.runs.ownership.refuse_files_of_others)."""

STATUS_FILE = "status.json"
#: What Hydra writes into a job's ``.hydra/``.
HYDRA_FILES = {"config.yaml", "hydra.yaml", "overrides.yaml"}
INFO_FILE = "run_info.json"
#: Locked by the process writing into the folder; it holds that process's pid and host.
LOCK_FILE = ".lock"
CHECKPOINT_DIR = "checkpoints"
LAST_CHECKPOINT = "last.ckpt"
#: Written when SIGTERM or Ctrl-C stops training (crackseg.runs.training_control.StopCheckpoint).
INTERRUPTED_CHECKPOINT = "interrupted.ckpt"
#: Lightning's saves in the run folder before a SLURM requeue (``hpc_ckpt_N.ckpt``).
SLURM_CHECKPOINTS = "hpc_ckpt_*.ckpt"
#: The samples of each set, one a row (crackseg.data.splits.DataSplit.save).
SPLIT_FILE = "split.csv"
#: The losses and metrics of every epoch, and their figure.
HISTORY_FILE = "history.json"
TRAINING_CURVES_FIGURE = "training_curves.png"
#: The test metrics, every test image's scores, and the report shaped like the seed's.
METRICS_FILE = "metrics.json"
SCORES_FILE = "test_scores.csv"
REPORT_FILE = "report.md"
#: The report's figures: the test set's curves, and a panel of test images (their Dice).
ROC_FIGURE = "ROC.png"
PR_FIGURE = "precision-recall.png"
DICE_PANELS_DIR = "dices"
#: A weak run's weak positives, which to annotate next first (crackseg.evaluation.weak_ranking).
RANKING_FILE = "weak_ranking.csv"
#: What a sweep's folder holds at its root, beside its jobs' folders: its settings as Hydra
#: saved them (the mark of a sweep's folder), and its summary.
SWEEP_FILE = "multirun.yaml"
#: The TensorBoard logger's folder (conf/logger/tensorboard.yaml, its ``name``).
TENSORBOARD_DIR = "tensorboard"
#: The CSV logger's (conf/logger/csv.yaml): a run's output too, but a name common enough in
#: a user's folder that it does not mark one as crackseg's (RUN_OUTPUTS below).
CSV_LOG_DIR = "csv"

#: What a training or an evaluation writes into its folder, beside its status: in a folder
#: without a status (not crackseg's) they are someone else's, and would be overwritten.
RUN_OUTPUTS = (
    CHECKPOINT_DIR,
    INFO_FILE,
    REPORT_FILE,
    METRICS_FILE,
    HISTORY_FILE,
    SPLIT_FILE,
    SCORES_FILE,
    TENSORBOARD_DIR,
    TRAINING_CURVES_FIGURE,
    ROC_FIGURE,
    PR_FIGURE,
    DICE_PANELS_DIR,
    RANKING_FILE,
)
