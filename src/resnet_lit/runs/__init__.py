"""What wraps a run: the ``resnet-lit`` CLI, its callbacks, the resumable CSV logger, the prediction writer,
Ctrl-C/SIGTERM handling, the run directory's lock and torchrun restarts."""
