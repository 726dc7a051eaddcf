"""Errors a user can cause; entry points turn them into one clear line and exit 2."""

#: Exit status of a command stopped by SIGTERM or Ctrl-C (128 + SIGTERM, as a shell reports it).
EXIT_STOPPED = 143


class CracksegError(Exception):
    """A problem with the user's input (data, config, checkpoint), not a bug."""


class DataError(CracksegError):
    """The dataset on disk cannot be used as it is."""


class ConfigError(CracksegError):
    """The composed configuration asks for something impossible."""


def describe_files(paths: list, limit: int = 5) -> str:
    """Name the first few offending files and how many there are in all."""
    shown = ", ".join(str(p) for p in paths[:limit])
    more = len(paths) - limit
    return f"{shown} (and {more} more, {len(paths)} in all)" if more > 0 else shown


def plural(count: int, noun: str) -> str:
    """A count and its noun, as a message says it: ``1 image``, ``2 images``."""
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


class TrainingDiverged(ConfigError):
    """The training loss stopped being a number: the settings (a learning rate too high, a
    precision too narrow) do not train on this data."""


class RunFolderError(ConfigError):
    """A run folder cannot be used as asked (it holds another run, or none); it is left as is."""


class SweepSettingsError(RunFolderError):
    """A sweep run again into its folder with settings its finished jobs did not have."""


class SweepStopped(KeyboardInterrupt):
    """A sweep stopped by SIGTERM between its jobs, or a local parallel one by SIGTERM or
    Ctrl-C, its running jobs stopped with their checkpoints (crackseg.runs.multirun)."""
