"""minivgg: VGG-16/19 and the image-optimization methods built on it, from scratch.

Hand-written forward and backward passes on numpy + numba (CPU) or CuPy + our own
CUDA kernels (GPU). See README.md and docs/.
"""

from .errors import MiniVGGError
from .vgg import Net, layer_names, load_vgg

__version__ = "0.1.0"
__all__ = ["MiniVGGError", "Net", "load_vgg", "layer_names", "__version__"]
