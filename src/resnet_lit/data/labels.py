"""The label values that mark an evaluation row as no image to count, in one place (torch-free).

An evaluation batch keeps a static shape, so a row may hold something other than a labelled image:
the stand-in for an unreadable image (``on_bad_image: skip``) or a padding row (data/padding.py).
The loss, the metrics and the image counts (training/eval_metrics.py, training/losses.py) read
these marks; predict drops such rows by their ``None`` path instead.
"""

# An image that ``on_bad_image="skip"`` replaced in an evaluation batch: the ``ignore_index`` of torch's
# cross-entropy and of torchmetrics, so evaluation counts each readable image once and never the
# neighbour that stood in for a bad one; counted as skipped.
SKIPPED_LABEL = -100
# A padding row (the last batch filled up to one evaluation shape): neither an image nor a skipped
# image, counted nowhere.
PADDED_LABEL = -101
