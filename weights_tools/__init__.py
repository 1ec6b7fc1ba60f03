"""weights_tools: convert, fetch, inspect and normalize pretrained VGG weights.

Reads the published VGG-16/19 files -- Caffe ``.caffemodel`` (V1 and V2 protobuf),
torchvision ``.pth`` (legacy and zip serialization), Keras ``.h5`` and MatConvNet
``.mat`` -- with no deep learning framework installed, and writes minivgg's HDF5
(``minivgg.weights``). Command line: ``python -m weights_tools --help``.

Modules: ``convert`` (detect, read, check, write), ``caffe``, ``torch_pickle``,
``keras``, ``matconvnet`` (the readers), ``fetch``, ``inspect``, ``normalize``, ``cli``.
"""

from .convert import CONVERTER_VERSION

__version__ = CONVERTER_VERSION
