"""The job's log file, written only once the command is accepted in its folder.

Hydra opens the job's log (``train.log``, ``predict.log``, ...) in the run folder before the
command has looked at that folder. A command refused for the folder (a finished run's, an
earlier prediction's) must leave it as it was, its log included: the log handler holds
the records until :func:`accept_job_logs` (called by crackseg.runs.ownership's
``accept_run_folder``) and writes nothing for a command refused before that. The records
were shown on the console all along.
"""

from __future__ import annotations

import logging
import weakref
from pathlib import Path

_handlers: weakref.WeakSet[JobLogHandler] = weakref.WeakSet()


class JobLogHandler(logging.FileHandler):
    """A file handler that opens its file only once its folder is accepted, then writes the
    records it held first (conf/hydra/default.yaml makes it the job's ``file`` handler)."""

    def __init__(
        self, filename: str, mode: str = "a", encoding: str | None = None, **_: object
    ) -> None:
        # A file name that is not UTF-8 (Linux allows any bytes) is logged with its other
        # bytes escaped, not lost to a logging error.
        super().__init__(filename, mode, encoding or "utf-8", delay=True, errors="backslashreplace")
        self._held: list[logging.LogRecord] | None = []
        _handlers.add(self)

    def emit(self, record: logging.LogRecord) -> None:
        if self._held is not None:
            self._held.append(record)
            return
        super().emit(record)

    def accept(self) -> None:
        held, self._held = self._held, None
        for record in held or []:
            super().emit(record)


def _job_logs(folder: str | Path) -> list[JobLogHandler]:
    folder = Path(folder).absolute()
    return [h for h in list(_handlers) if Path(h.baseFilename).parent == folder]


def accept_job_logs(folder: str | Path) -> None:
    """Let the job logs in ``folder`` write: the command has accepted its folder."""
    for handler in _job_logs(folder):
        handler.accept()


def log_traceback_to_file(folder: str | Path, error: BaseException) -> None:
    """``error``'s traceback in the job's log file in ``folder`` alone: the console showed
    it as one line (a user's mistake needs no stack trace), and a report of a fault still
    finds where it was raised (a config's class that failed inside, not only refused)."""
    record = logging.LogRecord(
        __name__,
        logging.ERROR,
        __file__,
        0,
        "failed; the error as raised (the console showed it as one line):",
        None,
        (type(error), error, error.__traceback__),
    )
    for handler in _job_logs(folder):
        handler.handle(record)
