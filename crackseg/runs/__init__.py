"""The run machinery, apart from the method: a run's folder, lock, status and provenance,
resuming, the config checks and resolvers, progress lines, sharing cores and GPUs, the
Trainer. The method packages (data, models, evaluation, deploy) never import it."""
