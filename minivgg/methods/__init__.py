"""The image-optimization methods, one file each (docs/methods.md):

- :func:`invert` — reconstruct an image from one layer (Mahendran & Vedaldi 2015);
- :func:`synthesize_texture` — texture synthesis from Gram matrices (Gatys 2015);
- :func:`style_transfer` — neural style transfer (Gatys 2016);
- :func:`dream` — DeepDream (Mordvintsev et al. 2015);
- :func:`visualize` — activation maximization of a channel or a class.

Each takes a net from ``minivgg.load_vgg`` and uint8 RGB images, and returns a
:class:`MethodResult`.
"""

from .common import LOG_COLUMNS, MethodResult, Objective
from .dream import dream
from .invert import invert
from .style import style_transfer
from .texture import synthesize_texture
from .visualize import visualize

__all__ = ["LOG_COLUMNS", "MethodResult", "Objective", "dream", "invert", "style_transfer", "synthesize_texture",
           "visualize"]
