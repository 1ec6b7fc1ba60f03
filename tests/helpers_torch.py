"""A plain torch VGG built from a minivgg weight mapping: the reference in the tests."""

import numpy as np

from minivgg.vgg import layer_names


def torch_vgg(arch, params, pooling, keep_classifier=False, dtype=None):
    import torch

    dtype = dtype or torch.float32
    names = layer_names(arch, keep_classifier)
    mods = []
    for name in names:
        if name.startswith("conv"):
            W, b = params[name]
            m = torch.nn.Conv2d(W.shape[1], W.shape[0], 3, 1, 1)
        elif name.startswith("fc"):
            W, b = params[name]
            m = torch.nn.Linear(W.shape[1], W.shape[0])
        elif name.startswith("relu"):
            m = torch.nn.ReLU()
        else:
            m = torch.nn.AvgPool2d(2, 2) if pooling == "avg" else torch.nn.MaxPool2d(2, 2)
        if name.startswith(("conv", "fc")):
            with torch.no_grad():
                m.weight.copy_(torch.from_numpy(np.asarray(W)))
                m.bias.copy_(torch.from_numpy(np.asarray(b)))
        mods.append((name, m.to(dtype)))
    return mods


def torch_forward(mods, x, wanted):
    """Run the torch layers up to the deepest wanted name; return {name: tensor}."""
    out, h = {}, x
    last = max(i for i, (n, _) in enumerate(mods) if n in wanted)
    for name, m in mods[: last + 1]:
        if name == "fc6":
            h = h.flatten(1)
        h = m(h)
        if name in wanted:
            out[name] = h
    return out
