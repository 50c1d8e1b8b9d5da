"""What wraps a run: the ``resnet-lit`` CLI, its callbacks, the resumable CSV logger, the prediction writer."""
