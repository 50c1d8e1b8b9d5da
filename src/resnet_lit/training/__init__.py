"""What runs inside ``fit``: the ImageClassifier, its optimiser and schedule, fine-tuning helpers."""
