"""resnet-lit: the residual networks of He et al. 2015 with PyTorch Lightning."""

__version__ = "0.1.0"
