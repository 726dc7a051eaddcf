"""The run machinery, apart from the method: the method packages (data, models, evaluation,
deploy) never import it.

- ``ownership``: who may write into a run folder (its lock, one owner per folder)
- ``status``: what a run folder holds (``status.json``, the checkpoints to continue from)
- ``resume``: how a training run starts or continues in its folder, refused where the
  settings differ
- ``provenance``: what produced a run (``run_info.json``)
- ``hydra_run``: what Hydra knows of a run (multirun or not, typed overrides, ``.hydra/``)
- ``lifecycle``: a run's life around its task (status, skipped jobs, stop and failure)
- ``trained_settings``: what an evaluation takes from the training run of its weights
- ``multirun``: a sweep's checks before its jobs, and its stop
- ``job_names``, ``job_folders``: a sweep's job folders, named by what tells its jobs apart,
  and the settings a finished job ran with
- ``config_changes``: what counts as a change of settings where a run continues
- ``config_checks``, ``resolvers``: the checks of a composed config, the configs' resolvers
- ``hardware``, ``gpus``, ``cpu_share``, ``threads``, ``allocator``: devices, precision,
  sharing GPUs and cores
- ``trainer``, ``training_control``: the Lightning Trainer and the callbacks that steer it
  (the validation schedule, the checkpoint on a stop, a diverged loss, moved run folders)
- ``progress``, ``job_log``: progress lines, the job's log
"""
