"""One file per layer kind; each holds forward, backward and the derivation."""

from .base import Layer
from .conv import Conv2d
from .linear import Linear
from .pool import AvgPool2d, MaxPool2d
from .relu import ReLU

__all__ = ["Layer", "Conv2d", "ReLU", "AvgPool2d", "MaxPool2d", "Linear"]
