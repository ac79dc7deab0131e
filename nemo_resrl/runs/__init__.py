"""A run's state on disk: the run directory and its lock (``run_dir``), the processes that must die with
the trainer (``children``), checkpoints with their manifests and resume (``checkpoints``, ``manifest``)."""
