"""Ablation sweeps: the summary and figures of a multirun (its jobs' folder names are the
run machinery's: crackseg.runs.job_names).

Importing the package registers the OmegaConf resolvers the Hydra configs use
(crackseg.runs.resolvers); Hydra imports it before composing any job, through the summary
callback in conf/hydra/default.yaml.
"""

from __future__ import annotations

import crackseg.runs.resolvers  # noqa: F401  (registers the resolvers the configs use)
