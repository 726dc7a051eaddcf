"""Ablation sweeps: one GPU per local job, job folder names, and the summary of a multirun.

Importing the package registers the OmegaConf resolvers the Hydra configs use:
``${crackseg.local_jobs:N}`` (conf/hydra/launcher/local_parallel.yaml) and
``${crackseg.dirname:...}`` (the job folder name in conf/hydra/default.yaml). Hydra imports
it before composing any job, through the summary callback in conf/hydra/default.yaml.
"""

from __future__ import annotations

import hashlib

from omegaconf import OmegaConf

from crackseg.sweep.gpus import claim_gpu, job_device_context, local_jobs, visible_gpus

#: Longest job folder name part, in bytes; file systems refuse names over 255.
MAX_DIRNAME_BYTES = 200


def job_dirname(override_dirname: str, max_bytes: int = MAX_DIRNAME_BYTES) -> str:
    """Hydra's override_dirname, shortened with a hash suffix only if it would be too long.

    A long list of fixed overrides would otherwise make every job fail with "File name too
    long"; the full overrides stay in each job's .hydra/overrides.yaml.
    """
    raw = override_dirname.encode()
    if len(raw) <= max_bytes:
        return override_dirname
    digest = hashlib.sha1(raw).hexdigest()[:8]
    head = raw[: max_bytes - len(digest) - 1].decode(errors="ignore")
    return f"{head}~{digest}"


def register_resolvers() -> None:
    """Register the resolvers once per process (Hydra resolves job configs in workers too)."""
    if not OmegaConf.has_resolver("crackseg.local_jobs"):
        OmegaConf.register_new_resolver("crackseg.local_jobs", local_jobs, use_cache=True)
    if not OmegaConf.has_resolver("crackseg.dirname"):
        OmegaConf.register_new_resolver("crackseg.dirname", job_dirname)


register_resolvers()

__all__ = ["claim_gpu", "job_device_context", "job_dirname", "local_jobs", "visible_gpus"]
