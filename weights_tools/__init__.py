"""weights_tools: convert, fetch, inspect and normalize pretrained VGG weights.

Reads the published VGG-16/19 files -- Caffe ``.caffemodel`` (V1 and V2 protobuf),
torchvision ``.pth`` (legacy and zip serialization), Keras ``.h5``, MatConvNet ``.mat``
and ONNX ``.onnx`` -- with no deep learning framework installed, and writes minivgg's HDF5
(``minivgg.weights``). Command line: ``python -m weights_tools --help``.

Modules: ``convert`` (detect, read, decide the input convention, check, write),
``caffe``, ``onnx_reader``, ``torch_pickle``, ``keras``, ``matconvnet`` (the readers),
``protobuf`` (the wire format, shared by caffe and onnx_reader), ``fingerprint`` (known
releases by their values), ``fetch``, ``inspect``, ``normalize``, ``cli``.
"""

from .convert import CONVERTER_VERSION

__version__ = CONVERTER_VERSION
