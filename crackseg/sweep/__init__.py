"""Ablation sweeps: a GPU and a share of the cores per local job, job folder names, and the
summary of a multirun.

Importing the package registers the OmegaConf resolvers the Hydra configs use
(crackseg.resolvers); Hydra imports it before composing any job, through the summary
callback in conf/hydra/default.yaml.
"""

from __future__ import annotations

from crackseg.resolvers import job_dirname
from crackseg.sweep.gpus import claim_gpu, job_device_context, local_jobs, visible_gpus

__all__ = ["claim_gpu", "job_device_context", "job_dirname", "local_jobs", "visible_gpus"]
