"""One file per layer kind; each holds the derivation, a reference forward and backward in
plain array code, and the layer class. fused.py: the fused layers and the plan."""

from .base import Layer
from .conv import Conv2d
from .fused import ConvReLU, ConvReLUAvgPool, Plan, plan
from .linear import Linear
from .pool import AvgPool2d, MaxPool2d
from .relu import ReLU

__all__ = ["Layer", "Conv2d", "ReLU", "AvgPool2d", "MaxPool2d", "Linear", "ConvReLU", "ConvReLUAvgPool", "Plan", "plan"]
