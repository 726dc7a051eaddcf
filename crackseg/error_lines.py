"""A user's mistake, or an error a run cannot go on from, as one line: Hydra's errors
(unknown settings, config names, override syntax), crackseg's own, storage and memory
errors, each worded with what to do instead. The entry points print it as ``error:`` and
exit non-zero (crackseg.cli); the run machinery words a failed job's status with it."""

from __future__ import annotations

import contextlib
import errno
import os
import re
import sys
import traceback
from pathlib import Path

from hydra.errors import (
    HydraException,
    InstantiationException,
    MissingConfigException,
    OverrideParseException,
)
from omegaconf.errors import InterpolationResolutionError
from tqdm import tqdm

import crackseg.errors
from crackseg.config_files import groups_of_command, target_arguments
from crackseg.errors import CracksegError
from crackseg.setting_rules import as_override, closest_setting

#: The names of crackseg's own error types (crackseg.errors).
_OWN_ERRORS = {
    name
    for name, value in vars(crackseg.errors).items()
    if isinstance(value, type) and issubclass(value, CracksegError)
}


#: The first line of an error a data loader's worker raised, raised again in the main process.
LOADER_WORKER_ERROR = re.compile(r"^Caught \w+ in DataLoader worker process \d+\.?$")
#: Errors of the file system that end a run with one line: the output folder is unwritable
#: (or its path runs through a file), the disk or the quota is full, a file grew too large,
#: a file name is too long for the file system.
STORAGE_ERRNOS = {
    errno.ENOSPC,
    errno.EDQUOT,
    errno.EROFS,
    errno.EACCES,
    errno.EPERM,
    errno.EFBIG,
    errno.ENOTDIR,
    errno.EEXIST,
    errno.ENAMETOOLONG,
}
#: Of those, the errors that say a write did not fit (full disk or quota, read-only file
#: system, file size limit); the others are worded as themselves.
WRITE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EFBIG}
#: How Hydra's lines after the first tell the user what to do instead ("To append to your
#: default list use +sweep=dilate", "3. To sweep over it, add --multirun ...", "Did you mean
#: ...", "Either ... Or ..."); the numbering of a list of them is dropped.
HYDRA_HINT = re.compile(r"^(?:\d+\.\s+)?((?:To|Did you mean|Either|Or)\b.*)")
#: Hydra's advice for a group chosen twice (``+experiment=demo``), as a defaults list says it.
YAML_OVERRIDE_ADVICE = re.compile(r"\.?\s*To override a value use 'override ([^:']+): ([^']*)'")
#: Hydra plugin configs an optional part of crackseg installs (pyproject.toml's extras).
PLUGIN_EXTRAS = {"hydra/sweeper/optuna": "pip install 'crackseg[search]'"}
#: The line of Hydra's "Could not find" error that names the group whose options follow.
AVAILABLE_IN = re.compile(r"^Available options in '(.+)':$")
#: A value of Hydra's sweep syntax: a function (``range(0, 3)``, ``choice(1, 2)``).
SWEEP_FUNCTION = re.compile(r"^\w+\(")
#: The line of Hydra's "Could not find" error before the folders it searched.
SEARCH_PATH_HEADING = "Config search path:"
#: How torch's CPU allocator says it ran out ("DefaultCPUAllocator: can't allocate memory:
#: you tried to allocate 4294967296 bytes"), and how its CUDA allocator says how much it
#: asked for ("CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has ...").
CPU_OUT_OF_MEMORY = re.compile(r"DefaultCPUAllocator: can't allocate memory: .*?(\d+) bytes")
GPU_ALLOCATION = re.compile(r"Tried to allocate ([\d.]+ [KMGT]?i?B)")


def print_line(text: str) -> None:
    """Print ``text`` to stderr at the start of a line of its own.

    A progress bar interrupted by an error is left mid-line (on stdout, on the same
    terminal): closing the bars still open ends that line first.
    """
    for bar in list(tqdm._instances):
        bar.close()
    sys.stdout.flush()
    print(text, file=sys.stderr, flush=True)


def is_storage_error(error: BaseException) -> bool:
    return isinstance(error, OSError) and error.errno in STORAGE_ERRNOS


def is_expected_error(error: BaseException) -> bool:
    """An error of the user's input or means (their data, config, disk, memory), told as
    one line; any other is a bug, told by its traceback."""
    return (
        isinstance(error, CracksegError)
        or is_storage_error(error)
        or out_of_memory_line(error) is not None
    )


def out_of_memory_line(error: BaseException) -> str | None:
    """The line for torch running out of memory, on the CPU or a GPU, or None for any other
    error: a setting's consequence (the batch, the image or tile size), not a bug."""
    if not isinstance(error, RuntimeError):
        return None
    if cpu := CPU_OUT_OF_MEMORY.search(str(error)):
        size = int(cpu[1])
        amount = f"{size / 2**30:.1f} GiB" if size >= 2**30 else f"{size / 2**20:.0f} MiB"
        where = ""
    else:
        torch = sys.modules.get("torch")  # not imported by a command refused before its run
        if torch is None or not isinstance(error, torch.OutOfMemoryError):
            return None
        gpu = GPU_ALLOCATION.search(str(error))
        amount, where = (gpu[1] if gpu else "more"), " on the GPU"
    return (
        f"out of memory{where}: could not allocate {amount}; lower the batch size or the "
        "size of the images (or tiles)"
    )


def root_cause(error: BaseException) -> BaseException:
    """What the user needs to see: the error a constructor (Hydra's instantiate) or a
    resolver (OmegaConf, which chains it as the context) raised, not the wrapper."""
    while isinstance(error, InstantiationException | InterpolationResolutionError):
        inner = error.__cause__ or error.__context__
        if inner is None:
            break
        error = inner
    return error


#: The config of the command whose errors are worded (``train``, ``predict``: set by
#: crackseg.cli.run_hydra_main), for a hint that depends on the groups it takes.
command_config: str | None = None

#: Hydra's refusal of a key its config lacks: "Could not override 'data.dilat'".
NOT_OVERRIDDEN = re.compile(r"Could not override '(?P<key>[^']+)'")


def unknown_setting_line(text: str, cause: BaseException | None) -> str | None:
    """``data.dilat is not a setting (did you mean data.dilate?)``: a key Hydra cannot
    override in a block whose settings crackseg knows, or at the top of a command's config,
    where Hydra's advice to add it with ``+`` would only be refused next, or ignored
    (nothing reads it). In a block that builds a class (``trainer``: Lightning's Trainer)
    Hydra's advice stays for an argument the class takes (``trainer.max_steps``), any other
    key is named with the argument closest to it; in any other block only where a setting of
    that block is close to it. None for other errors."""
    match = NOT_OVERRIDDEN.match(text)
    if match is None or "not in struct" not in str(cause):
        return None
    from crackseg.data.data_settings import data_keys

    block, _, name = match["key"].lstrip("+~").rpartition(".")
    siblings = getattr(cause, "parent_node", None)
    here = [key for key in siblings if key not in ("hydra", "_target_")] if siblings else []
    if not block:
        return f"{name} is not a setting{closest_setting('', name, sorted(here))}"
    root = block.split(".")[0]
    if getattr(cause, "full_key", None) == root and command_config:  # no such block
        if root not in groups_of_command(command_config):
            return f"{block}.{name} is not a setting: this command has no {root} settings"
        having = [f"{root}={c}" for c in configs_with(root, name)] if block == root else []
        chosen = f": {' or '.join(having)} sets it" if having else ""
        return f"{block}.{name} is not a setting: no {root} option is chosen{chosen}"
    if root == "data":
        known = (
            data_keys(block) if block in ("data", "data.augment", "data.extra_segmented") else None
        )
    else:
        from crackseg.models.module_settings import SETTINGS_BLOCKS

        known = sorted(SETTINGS_BLOCKS[block]) if block in SETTINGS_BLOCKS else None
    if not known:
        target = siblings.get("_target_") if siblings else None
        arguments = target_arguments(target)
        if isinstance(target, str) and (arguments is None or name in arguments):
            return None  # an argument of the class the block builds: added with +, it is taken
        if arguments is not None:  # the class would refuse it, added with + as Hydra advises
            known = sorted((set(arguments) | set(here)) - {"_partial_"})
            return f"{block}.{name} is not a setting{closest_setting(block, name, known)}"
        close = closest_setting(block, name, here)
        return f"{block}.{name} is not a setting{close}" if "did you mean" in close else None
    if name in known:  # a setting of other configs than the one chosen
        having = [f"data={c}" for c in configs_with("data", name)] if block == "data" else []
        if not having:
            return None  # Hydra's advice (+key=value) holds: something reads that key
        return f"{block}.{name} is not a setting of this config (only of {', '.join(having)})"
    return f"{block}.{name} is not a setting{closest_setting(block, name, known)}"


def configs_with(group: str, key: str) -> list[str]:
    """The options of config group ``group`` that set ``key`` (``dagm`` of data for
    ``dagm_class``, ``step`` of scheduler for ``step_size``)."""
    import yaml

    import crackseg

    found = []
    for path in sorted((Path(crackseg.CONFIG_DIR) / group).glob("*.yaml")):
        with contextlib.suppress(OSError, yaml.YAMLError):
            if key in (yaml.safe_load(path.read_text()) or {}):
                found.append(path.stem)
    return found


def hydra_hints(lines: list[str]) -> list[str]:
    """Hydra's advice among the lines after the first of its error, each as a clause to
    follow that first line (``to append to your default list use +sweep=dilate``)."""
    hints = [match[1] for match in map(HYDRA_HINT.match, lines[1:]) if match]
    return [hint[0].lower() + hint[1:] for hint in hints]


def options_in_subfolders(group: str, search_path: list[str]) -> list[str]:
    """The configs in the subfolders of ``group`` (``paper/ksdd`` of ``experiment``), in
    the config folders of Hydra's search path (``provider=main, path=file:///...``).

    ``experiment=paper/ksdd`` chooses such a config, but Hydra's list of the options of a
    group names only the group's own files.
    """
    found = []
    for line in search_path:
        _, _, folder = line.partition("path=file://")
        if folder:
            group_dir = Path(folder, group)
            found += [
                path.relative_to(group_dir).with_suffix("").as_posix()
                for path in group_dir.glob("*/**/*.yaml")
            ]
    return found


def missing_config_line(lines: list[str]) -> str:
    """Hydra's "Could not find 'data/foo'" as one line with the group's options inlined,
    those in its subfolders too. Its lines: what was not found, "Available options in
    'data':" and one option a line, then the config search path, one folder a line."""
    listed = lines[1:]
    search_path: list[str] = []
    if SEARCH_PATH_HEADING in listed:
        end = listed.index(SEARCH_PATH_HEADING)
        listed, search_path = listed[:end], listed[end + 1 :]
    group = AVAILABLE_IN.match(listed[0]) if listed else None
    if group is None:
        return lines[0]
    options = sorted({*listed[1:], *options_in_subfolders(group[1], search_path)})
    line = f"{lines[0]} (available: {', '.join(options)})"
    needs = next((extra for name, extra in PLUGIN_EXTRAS.items() if f"'{name}'" in lines[0]), None)
    return f"{line}: {needs} installs it" if needs else line


def unparsed_override_line(override: str | None, reason: str) -> str:
    """Hydra's refusal of a typed ``key=value``, with the quoted form where the value is a
    path holding what Hydra reads as syntax (a sweep job's folder, ``0_data.dilate=1,seed=0``,
    in a ``resume=`` or ``ckpt_path=``)."""
    if not override:
        return f"cannot parse the command line: {reason}"
    line = f"cannot parse {override}: {reason}"
    key, _, value = override.partition("=")
    if value == "~" or value.startswith("~/"):  # the shell expands ~ only at a word's start
        return f"{line}; write {key}=$HOME{value[1:]}"
    # A path holds a separator, or a space (``photo (1).jpg``); ``range(0, 3`` is a sweep's
    # function, mistyped. Hydra parses no letter outside ASCII unquoted (``/data/béton``).
    path_like = any(c in value for c in ("/", os.sep, " ")) and not SWEEP_FUNCTION.match(value)
    quotable = (path_like and any(c in value for c in "=, ()")) or not value.isascii()
    if quotable and key and not key.startswith(("+", "~")):
        line += f"; quote the value: {as_override(key, value)}"
    return line


def one_line(error: BaseException) -> str:
    """An error as one line: a file system error names its file (``cannot write FILE: ...``
    for a write that did not fit), running out of memory says what to lower, Hydra's lists
    and its advice are inlined."""
    if memory := out_of_memory_line(error):
        return memory
    if isinstance(error, OSError) and error.strerror:
        if error.errno in WRITE_ERRNOS:
            where = f" {error.filename}" if error.filename else ""
            return f"cannot write{where}: {error.strerror}"
        return f"{error.filename}: {error.strerror}" if error.filename else error.strerror
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    if lines and LOADER_WORKER_ERROR.match(lines[0]):
        # Raised again from a data loader's worker: its own line is the traceback's last,
        # "crackseg.errors.DataError: MESSAGE".
        lines = [lines[-1].split(": ", 1)[-1]]
    if isinstance(error, MissingConfigException) and len(lines) > 1:
        return missing_config_line(lines)
    if isinstance(error, OverrideParseException):
        return unparsed_override_line(error.override, lines[0])
    text = lines[0] if lines else type(error).__name__
    if isinstance(error, InterpolationResolutionError):
        # A resolver's refusal that lost its chain on the way back from a launcher's worker
        # process: "RunFolderError raised while resolving interpolation: MESSAGE".
        name, _, message = text.partition(" raised while resolving interpolation: ")
        if message and name in _OWN_ERRORS:
            text = message
    if not isinstance(error, HydraException):
        return text
    cause = error.__cause__
    if cause is not None:
        # Hydra's first line names what failed ("Error in call to target 'X':"), its cause
        # why: a config error, or what the target raised.
        text = f"{text.rstrip('.:')}: {one_line(cause)}"
    if unknown := unknown_setting_line(text, cause):
        return unknown
    # "+experiment=demo" where the config chooses one already: Hydra's advice is YAML for a
    # defaults list; on the command line the option is chosen without the +.
    text = YAML_OVERRIDE_ADVICE.sub(r"; choose it without the +: \1=\2", text)
    # Then what Hydra advises doing instead: "Could not override 'sweep'. No match in the
    # defaults list; to append to your default list use +sweep=dilate".
    hints = hydra_hints(lines)
    return "; ".join([text.rstrip("."), *hints]) if hints else text


def cannot_set_up_run_folder(error: BaseException) -> str | None:
    """The line for a file error of Hydra setting up a job's folder (creating it, its log,
    its ``.hydra/``: ``hydra.run.dir=/proc/x``), or None for any other error. Told by the
    traceback: the task itself runs inside Hydra's ``run_job`` too, but its errors are
    raised again outside it."""
    if not isinstance(error, OSError) or not error.filename:
        return None
    setup = os.path.join("hydra", "core", "utils.py")
    frames = traceback.extract_tb(error.__traceback__)
    if not any(f.name == "run_job" and f.filename.endswith(setup) for f in frames):
        return None
    return f"cannot set up the run folder: {os.fsdecode(error.filename)}: {error.strerror}"
