"""The ``resnet-lit`` commands that are not Trainer entry points: ``export``, ``report``, ``imagenet-val``.

Each module has a ``main(argv) -> int``; ``resnet_lit.runs.cli`` dispatches to it by name.
"""
