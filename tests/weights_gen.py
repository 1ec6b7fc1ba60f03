"""Writers of genuine-format VGG weight files for the weights_tools tests.

Each writer takes our params (``{"conv1_1": (W (out, in, 3, 3), b)}``, optionally fc6-fc8
``(out, in)``) and produces the file the way its framework lays it out, so reading it
back exercises the real parsing and layout conversions:

- ``write_caffemodel``: a protobuf NetParameter from a small encoder (V1 ``layers`` with
  enum types, or V2 ``layer`` with string types), legacy 4-D or ``shape`` blobs.
- ``write_keras``: Keras ``save_weights`` HDF5, ``block1_conv1/kernel:0`` (Keras 2) or
  ``block1_conv1_W_1:0`` (Keras 1) naming, kernels (kh, kw, in, out).
- ``write_matconvnet``: a SimpleNN ``imagenet-vgg-verydeep`` .mat via scipy.io.savemat.
- ``torch_state_dict``: torchvision's ``features.N`` / ``classifier.N`` keys (needs torch).
"""

import collections
import struct

import numpy as np

BLOCKS = {"vgg16": (2, 2, 3, 3, 3), "vgg19": (2, 2, 4, 4, 4)}
CHANNELS = (64, 128, 256, 512, 512)
CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)


def conv_names(arch):
    return [f"conv{b}_{i}" for b, n in enumerate(BLOCKS[arch], 1) for i in range(1, n + 1)]


def random_params(arch, seed=0, scale=1.0, dtype=np.float32):
    """He-initialised random conv weights with small random biases (real VGG shapes)."""
    rng = np.random.default_rng(seed)
    params = {}
    cin = 3
    for b, (n, c) in enumerate(zip(BLOCKS[arch], CHANNELS), 1):
        for i in range(1, n + 1):
            W = rng.standard_normal((c, cin, 3, 3)) * np.sqrt(2.0 / (cin * 9)) * scale
            params[f"conv{b}_{i}"] = (W.astype(dtype), (rng.standard_normal(c) * 0.1).astype(dtype))
            cin = c
    return params


def layer_sequence(arch):
    """VGG as Caffe lists it: (name, kind) with kind conv / relu / pool."""
    seq = []
    for b, n in enumerate(BLOCKS[arch], 1):
        for i in range(1, n + 1):
            seq += [(f"conv{b}_{i}", "conv"), (f"relu{b}_{i}", "relu")]
        seq.append((f"pool{b}", "pool"))
    return seq


# ------------------------------------------------------------------ protobuf encoder

def varint(n):
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def key(num, wt):
    return varint((num << 3) | wt)


def ld(num, payload):
    """A length-delimited field (string, bytes, sub-message, packed repeated)."""
    return key(num, 2) + varint(len(payload)) + payload


def vint(num, value):
    return key(num, 0) + varint(value)


def blob(arr, legacy=True, packed=True):
    """A BlobProto: legacy num/channels/height/width (1-4) or BlobShape (7), data (5)."""
    arr = np.asarray(arr, dtype="<f4")
    msg = b""
    if legacy:
        dims = (1,) * (4 - arr.ndim) + arr.shape
        for num, d in zip((1, 2, 3, 4), dims):
            msg += vint(num, d)
    else:
        msg += ld(7, ld(1, b"".join(varint(d) for d in arr.shape)))
    if packed:
        msg += ld(5, arr.tobytes())
    else:
        msg += b"".join(key(5, 5) + struct.pack("<f", float(v)) for v in arr.reshape(-1))
    return msg


V1_ENUM = {"conv": 4, "fc": 14, "relu": 18, "pool": 17, "dropout": 6, "softmax": 20}
V2_TYPE = {"conv": "Convolution", "fc": "InnerProduct", "relu": "ReLU", "pool": "Pooling",
           "dropout": "Dropout", "softmax": "Softmax"}


def caffe_layer(name, kind, blobs=(), v1=True, legacy_blobs=True):
    if v1:
        msg = ld(4, name.encode()) + vint(5, V1_ENUM[kind])
        msg += ld(2, b"data") + ld(3, name.encode())  # bottom / top, ignored by the reader
        msg += b"".join(ld(6, blob(a, legacy=legacy_blobs)) for a in blobs)
        msg += vint(1000, 7)  # an unknown field: must be skipped
        return ld(2, msg)
    msg = ld(1, name.encode()) + ld(2, V2_TYPE[kind].encode()) + ld(3, b"data") + ld(4, name.encode())
    msg += b"".join(ld(7, blob(a, legacy=legacy_blobs)) for a in blobs)
    return ld(100, msg)


def caffemodel_bytes(arch, params, v1=True, legacy_blobs=None, fc=None):
    """``fc``: optional list of (name, W (out, in), b) appended as InnerProduct layers."""
    legacy_blobs = v1 if legacy_blobs is None else legacy_blobs
    out = ld(1, f"VGG_ILSVRC_{arch[3:]}_layers".encode())
    out += ld(3, b"data") + b"".join(vint(4, d) for d in (10, 3, 224, 224))
    for name, kind in layer_sequence(arch):
        blobs = params[name] if kind == "conv" else ()
        out += caffe_layer(name, kind, blobs, v1=v1, legacy_blobs=legacy_blobs)
    for name, W, b in fc or ():
        out += caffe_layer(name, "fc", (W, b), v1=v1, legacy_blobs=legacy_blobs)
        out += caffe_layer("relu" + name[2:], "relu", (), v1=v1)
    return out


def write_caffemodel(path, arch, params, v1=True, legacy_blobs=None, fc=None):
    with open(path, "wb") as f:
        f.write(caffemodel_bytes(arch, params, v1=v1, legacy_blobs=legacy_blobs, fc=fc))


# ------------------------------------------------------------------ Keras HDF5

def write_keras(path, arch, params, naming="keras2", compression=None):
    import h5py

    layer_names = []
    with h5py.File(path, "w") as f:
        f.attrs["backend"] = b"tensorflow"
        f.attrs["keras_version"] = b"2.1.2" if naming == "keras2" else b"1.2.2"
        for b, n in enumerate(BLOCKS[arch], 1):
            for i in range(1, n + 1):
                lname = f"block{b}_conv{i}"
                W, bias = params[f"conv{b}_{i}"]
                kernel = np.asarray(W).transpose(2, 3, 1, 0)  # (out, in, kh, kw) -> (kh, kw, in, out)
                if naming == "keras2":
                    wn = [f"{lname}/kernel:0", f"{lname}/bias:0"]
                else:
                    wn = [f"{lname}_W_1:0", f"{lname}_b_1:0"]
                g = f.create_group(lname)
                g.attrs["weight_names"] = np.array([w.encode() for w in wn])
                g.create_dataset(wn[0], data=kernel, compression=compression)
                g.create_dataset(wn[1], data=np.asarray(bias), compression=compression)
                layer_names.append(lname)
            pname = f"block{b}_pool"
            f.create_group(pname).attrs["weight_names"] = np.array([], dtype="S1")
            layer_names.append(pname)
        f.attrs["layer_names"] = np.array([n.encode() for n in layer_names])


# ------------------------------------------------------------------ MatConvNet .mat

def write_matconvnet(path, arch, params, mean_rgb=(123.68, 116.779, 103.939), fc=None):
    """SimpleNN layout: ``layers`` a 1xL cell of structs; conv W (h, w, in, out), b (out, 1).
    ``fc``: optional list of (name, W (h, w, in, out), b)."""
    import scipy.io

    layers = []
    for name, kind in layer_sequence(arch):
        if kind == "conv":
            W, b = params[name]
            wts = np.empty((1, 2), dtype=object)
            wts[0, 0] = np.asarray(W).transpose(2, 3, 1, 0).astype(np.float32)
            wts[0, 1] = np.asarray(b, dtype=np.float32).reshape(-1, 1)
            layers.append({"name": name, "type": "conv", "weights": wts, "stride": np.array([[1, 1]]),
                           "pad": np.array([[1, 1, 1, 1]])})
        elif kind == "relu":
            layers.append({"name": name, "type": "relu"})
        else:
            layers.append({"name": name, "type": "pool", "method": "max", "pool": np.array([[2, 2]])})
    for name, W, b in fc or ():
        wts = np.empty((1, 2), dtype=object)
        wts[0, 0] = np.asarray(W, dtype=np.float32)
        wts[0, 1] = np.asarray(b, dtype=np.float32).reshape(-1, 1)
        layers.append({"name": name, "type": "conv", "weights": wts})
    cell = np.empty((1, len(layers)), dtype=object)
    for i, L in enumerate(layers):
        cell[0, i] = L
    meta = {"normalization": {"averageImage": np.asarray(mean_rgb, dtype=np.float32).reshape(1, 1, 3),
                              "imageSize": np.array([[224, 224, 3]], dtype=np.float64),
                              "interpolation": "bilinear"},
            "classes": {"name": np.array(["n01440764"], dtype=object), "description": np.array(["tench"], dtype=object)}}
    scipy.io.savemat(path, {"layers": cell, "meta": meta})


# ------------------------------------------------------------------ torch

def torch_state_dict(arch, params, fc=None):
    import torch

    sd = collections.OrderedDict()
    idx = 0
    for b, n in enumerate(BLOCKS[arch], 1):
        for i in range(1, n + 1):
            W, bias = params[f"conv{b}_{i}"]
            sd[f"features.{idx}.weight"] = torch.from_numpy(np.array(W))
            sd[f"features.{idx}.bias"] = torch.from_numpy(np.array(bias))
            idx += 2
        idx += 1
    for j, (W, bias) in zip((0, 3, 6), fc or ()):
        sd[f"classifier.{j}.weight"] = torch.from_numpy(np.array(W))
        sd[f"classifier.{j}.bias"] = torch.from_numpy(np.array(bias))
    return sd


# ------------------------------------------------------------------ reference features

def reference_features_nchw(x, params, arch, layers):
    """torch reference: VGG with max pooling on x (1, 3, H, W) already preprocessed."""
    import torch
    import torch.nn.functional as F

    h = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
    out = {}
    for name, kind in layer_sequence(arch):
        if kind == "conv":
            W, b = params[name]
            h = F.conv2d(h, torch.from_numpy(np.asarray(W)), torch.from_numpy(np.asarray(b)), padding=1)
        elif kind == "relu":
            h = F.relu(h)
        else:
            h = F.max_pool2d(h, 2, 2)
        out[name] = h.numpy()
        if all(l in out for l in layers):
            break
    return {l: out[l] for l in layers}


def reference_features_hwio(x_nhwc, kernels, biases, arch, layers):
    """The TensorFlow / MatConvNet definition, written out in torch for speed:
    y[n, r, c, o] = b[o] + sum_{i, j, k} x[n, r + i - 1, c + j - 1, k] K[i, j, k, o]
    (channels last, kernel (kh, kw, in, out), zero padding 1, a cross-correlation)."""
    import torch
    import torch.nn.functional as F

    h = torch.from_numpy(np.ascontiguousarray(x_nhwc, dtype=np.float32))
    out = {}
    for name, kind in layer_sequence(arch):
        if kind == "conv":
            K = torch.from_numpy(np.asarray(kernels[name], dtype=np.float32))
            n, H, W, _ = h.shape
            hp = F.pad(h, (0, 0, 1, 1, 1, 1))
            y = torch.zeros(n, H, W, K.shape[3]) + torch.from_numpy(np.asarray(biases[name], dtype=np.float32))
            for i in range(3):
                for j in range(3):
                    y = y + hp[:, i : i + H, j : j + W, :] @ K[i, j]
            h = y
        elif kind == "relu":
            h = F.relu(h)
        else:
            h = F.max_pool2d(h.permute(0, 3, 1, 2), 2, 2).permute(0, 2, 3, 1)
        out[name] = h.numpy()
        if all(l in out for l in layers):
            break
    return {l: out[l].transpose(0, 3, 1, 2) for l in layers}
