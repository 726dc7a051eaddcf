"""``python -m crackseg.ENTRY`` without paying for its imports each time.

Most of a tiny test run's seconds go to importing torch and Lightning (torch._dynamo, scipy
and matplotlib come with them), not to the run. A forkserver process imports them once per
pytest worker; each command is then a child forked from it that runs the entry point as
``python -m`` would: ``__main__``, ``sys.argv``, the working folder, the environment and the
standard streams are the command's own, and its exit code is the process's. The child is a
real process of its own, so signals, locks on run folders and exit codes behave as for a
user's command. Nothing of crackseg is imported before the fork.

What the warm child cannot show is what a fresh interpreter imports: a test that reads the
import log (PYTHONPROFILEIMPORTTIME), or that sets an environment variable the preloaded
libraries read as they are imported (any but WARM_ENV), runs a fresh interpreter, as does a
sweep of jobs side by side (FRESH_ONLY). CRACKSEG_TEST_FRESH=1 runs every command so.
"""

from __future__ import annotations

import atexit
import functools
import json
import multiprocessing
import os
import runpy
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

#: Imported once in the forkserver (from site-packages: the forkserver's path is python's
#: own): the libraries every entry point imports before its run starts.
PRELOAD = ["torch", "pytorch_lightning", "hydra", "omegaconf", "cv2", "albumentations"]
#: Environment variables a warm child takes as the command's own; any other variable a test
#: sets runs a fresh interpreter (the preloaded libraries may have read it on import).
WARM_ENV = {"PYTHONPATH", "PYTEST_CURRENT_TEST"}
#: Overrides whose commands run a fresh interpreter: a sweep of jobs side by side (joblib's
#: process pool) in a forkserver's child did not end in 300 s where a fresh one takes 20.
FRESH_ONLY = {"hydra/launcher=local_parallel"}


@functools.cache
def warm_context() -> multiprocessing.context.ForkServerContext:
    """This process's forkserver (started at its first child), preloading PRELOAD."""
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(PRELOAD)
    return context


@functools.cache
def python_path() -> list[str]:
    """sys.path of a fresh interpreter, less its first entry (the script's folder, or the
    working folder of ``python -m``) and PYTHONPATH's folders."""
    code = "import json, sys; print(json.dumps(sys.path[1:]))"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, env=env, check=True)
    return json.loads(done.stdout)


def _entry_point(
    module: str, argv: list[str], env: dict[str, str], cwd: str, path: list[str], out: str
) -> None:
    """In the forked child: become ``python -m MODULE ARGV`` with ``env`` in ``cwd``."""
    # A forkserver's child starts its own children (a DataLoader's workers) through a
    # forkserver too, each importing torch again; a fresh python forks them.
    multiprocessing.set_start_method(None, force=True)
    os.chdir(cwd)
    os.environ.clear()
    os.environ.update(env)
    extra = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    sys.path[:] = [cwd, *extra, *path]  # as python -m has it, not as pytest's worker has
    for fd, name in ((1, "stdout"), (2, "stderr")):
        target = os.open(f"{out}.{name}", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.dup2(target, fd)
        os.close(target)
    try:
        sys.argv = ["-m", *argv]
        runpy.run_module(module, run_name="__main__", alter_sys=True)
    except SystemExit:
        raise  # its code is the exit code, as in python
    except BaseException as raised:
        sys.excepthook(type(raised), raised, raised.__traceback__)
        if isinstance(raised, KeyboardInterrupt):  # python ends by the signal then
            atexit._run_exitfuncs()
            sys.stdout.flush()
            sys.stderr.flush()
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            os.kill(os.getpid(), signal.SIGINT)
        sys.exit(1)
    finally:
        atexit._run_exitfuncs()  # the fork's exit skips them; python runs them at exit


def runs_warm(argv: tuple[str, ...] | list[str], env: dict[str, str]) -> bool:
    """Whether a command with ``argv`` and the test's ``env`` may run in a warm child."""
    if os.environ.get("CRACKSEG_TEST_FRESH") == "1":
        return False
    return not (set(env) - WARM_ENV or FRESH_ONLY & set(argv))


def _read(path: str) -> str:
    return Path(path).read_text(errors="replace") if os.path.exists(path) else ""


def run_module(
    module: str, argv: list[str], cwd: Path, env: dict[str, str], timeout: float
) -> subprocess.CompletedProcess:
    """``python -m MODULE ARGV`` in a warm child; its output captured as text."""
    command = [sys.executable, "-m", module, *argv]
    with tempfile.TemporaryDirectory(prefix="warm-") as folder:
        out = os.path.join(folder, "out")
        args = (module, argv, env, str(cwd), python_path(), out)
        child = warm_context().Process(target=_entry_point, args=args)
        child.start()
        child.join(timeout)
        if child.exitcode is None:
            child.kill()
            child.join()
            raise subprocess.TimeoutExpired(command, timeout)
        return subprocess.CompletedProcess(
            command, child.exitcode, _read(f"{out}.stdout"), _read(f"{out}.stderr")
        )
