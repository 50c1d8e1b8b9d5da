"""resnet-lit: the residual networks of He et al. 2015 with PyTorch Lightning."""

from resnet_lit import _moved

__version__ = "0.1.0"

_moved.install()  # old module paths (resnet_lit.module, resnet_lit.cli, ...) still import: see _moved.py
