"""Checkpoints and weights: reading weights safely, writing checkpoints atomically, choosing the
checkpoint a run resumes from, and what resnet-lit adds to a checkpoint beyond Lightning's own."""
