"""Download a published VGG weights file, verify it, convert it into the cache.

Each name in :data:`SOURCES` gives the official URL(s), the published size and checksum
(MD5 for the VGG Caffe models and the keras-applications files; for torchvision the
first hex digits of the SHA-256 are part of the file name). The download goes to
``<dir>/downloads/<file>.part``; an interrupted one is resumed with an HTTP ``Range``
request. Only when the size and checksum match is the file renamed into place and
converted; the converted HDF5 is written atomically to ``<dir>/<arch>-<name>.h5``, where
``minivgg.weights.default_weights_path`` looks. A download that does not verify is
deleted and reported; nothing in the cache changes.

``$MINIVGG_FETCH_BASE`` (or ``base_url=``) replaces the host and path of every URL, keeping
the file name -- for a mirror, or for tests serving files on 127.0.0.1.
"""

import hashlib
import http.client
import os
import re
import urllib.error
import urllib.request

from minivgg import options
from minivgg import weights as mw
from minivgg.errors import MiniVGGError

VGG_CAFFE = "http://www.robots.ox.ac.uk/~vgg/software/very_deep/caffe/"  # as the model gists list it
VGG_CAFFE_HTTPS = "https://www.robots.ox.ac.uk/~vgg/software/very_deep/caffe/"
TORCHVISION = "https://download.pytorch.org/models/"
KERAS = "https://storage.googleapis.com/tensorflow/keras-applications/"
KERAS_OLD = "https://github.com/fchollet/deep-learning-models/releases/download/v0.1/"

SOURCES = {
    "vgg19-caffe": {
        "arch": "vgg19", "file": "VGG_ILSVRC_19_layers.caffemodel",
        "urls": [VGG_CAFFE + "VGG_ILSVRC_19_layers.caffemodel", VGG_CAFFE_HTTPS + "VGG_ILSVRC_19_layers.caffemodel"],
        "size": 574671192, "md5": "b5c644beabd7cf06bdd9065cfd674c97",
        "info": "https://gist.github.com/ksimonyan/3785162f95cd2d5fee77",
    },
    "vgg16-caffe": {
        "arch": "vgg16", "file": "VGG_ILSVRC_16_layers.caffemodel",
        "urls": [VGG_CAFFE + "VGG_ILSVRC_16_layers.caffemodel", VGG_CAFFE_HTTPS + "VGG_ILSVRC_16_layers.caffemodel"],
        "size": 553432081, "md5": "441315b0ff6932dbfde97731be7ca852",
        "info": "https://gist.github.com/ksimonyan/211839e770f7b538e2d8",
    },
    "vgg19-torchvision": {
        "arch": "vgg19", "file": "vgg19-dcbb9e9d.pth",
        "urls": [TORCHVISION + "vgg19-dcbb9e9d.pth"], "sha256_prefix": "dcbb9e9d",
    },
    "vgg16-torchvision": {
        "arch": "vgg16", "file": "vgg16-397923af.pth",
        "urls": [TORCHVISION + "vgg16-397923af.pth"], "sha256_prefix": "397923af",
    },
    "vgg19-keras-notop": {
        "arch": "vgg19", "file": "vgg19_weights_tf_dim_ordering_tf_kernels_notop.h5",
        "urls": [KERAS + "vgg19/vgg19_weights_tf_dim_ordering_tf_kernels_notop.h5",
                 KERAS_OLD + "vgg19_weights_tf_dim_ordering_tf_kernels_notop.h5"],
        "md5": "253f8cb515780f3b799900260a226db6",
    },
    "vgg16-keras-notop": {
        "arch": "vgg16", "file": "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5",
        "urls": [KERAS + "vgg16/vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5",
                 KERAS_OLD + "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5"],
        "md5": "6d6bbae143d832006294945121d1f1fc",
    },
    "vgg19-keras": {
        "arch": "vgg19", "file": "vgg19_weights_tf_dim_ordering_tf_kernels.h5",
        "urls": [KERAS + "vgg19/vgg19_weights_tf_dim_ordering_tf_kernels.h5"],
        "md5": "cbe5617147190e668d6c5d5026f83318",
    },
    "vgg16-keras": {
        "arch": "vgg16", "file": "vgg16_weights_tf_dim_ordering_tf_kernels.h5",
        "urls": [KERAS + "vgg16/vgg16_weights_tf_dim_ordering_tf_kernels.h5"],
        "md5": "64373286793e3c8b2b4e3219cbf3544b",
    },
}

CHUNK = 1 << 20


def output_name(name, keep_classifier=False):
    """The cache file name for a fetched ``name``: ``<arch>-<source>[-fc].h5``."""
    arch, _, rest = name.partition("-")
    return f"{arch}-{rest}{'-fc' if keep_classifier else ''}.h5"


def fetch(name, dest_dir=None, keep_classifier=False, base_url=None, url=None, md5=None, sha256=None,
          size=None, force=False, progress=True, log=None):
    """Download, verify and convert ``name``; return the path of the converted HDF5.

    ``url``/``md5``/``sha256``/``size`` override the registry (for a mirror or a file
    of one's own); ``base_url`` (default ``$MINIVGG_FETCH_BASE``) replaces the directory
    part of the official URLs.
    """
    from .convert import convert

    log = log or (lambda msg: None)
    if name not in SOURCES:
        raise MiniVGGError(f"unknown weights name {name!r}; choose one of {', '.join(SOURCES)}")
    entry = dict(SOURCES[name])
    if keep_classifier and name.endswith("-notop"):
        raise MiniVGGError(f"{name} has no classifier (fc6-fc8) to keep; fetch {name[:-6]} for one")
    if url is not None or md5 is not None or sha256 is not None:
        # user-supplied checksums replace the published ones (and are then the only check)
        entry.pop("md5", None)
        entry.pop("sha256_prefix", None)
        entry.pop("size", None)
    if md5:
        entry["md5"] = md5.lower()
    if sha256:
        entry["sha256"] = sha256.lower()
    if size is not None:
        entry["size"] = int(size)
    if url is not None:
        urls = [url]
        m = re.search(r"-([0-9a-f]{8,64})\.pth$", url)
        if m and "md5" not in entry and "sha256" not in entry:
            entry["sha256_prefix"] = m.group(1)
    else:
        base = base_url if base_url is not None else options.get("fetch_base")
        urls = [base.rstrip("/") + "/" + entry["file"]] if base else entry["urls"]
    dest_dir = dest_dir or mw.cache_dir()
    out = os.path.join(dest_dir, output_name(name, keep_classifier))
    if os.path.exists(out) and not force:
        log(f"{out} already exists (use --force to fetch again)")
        return out
    dl_dir = os.path.join(dest_dir, "downloads")
    try:
        os.makedirs(dl_dir, exist_ok=True)
    except OSError as e:
        raise MiniVGGError(f"{dest_dir}: cannot create the cache directory ({e.strerror or e})") from None
    src = os.path.join(dl_dir, entry["file"])
    if not (os.path.exists(src) and _verified(src, entry, log)):
        if os.path.exists(src):
            os.remove(src)
        last = None
        for u in urls:
            try:
                _download(u, src, entry, progress, log)
                last = None
                break
            except MiniVGGError as e:
                last = e
                if os.path.exists(src + ".part") or "checksum" in str(e) or "size" in str(e):
                    break  # resume or reject from the same place; only unreachable URLs fall through
        if last is not None:
            raise last
    log(f"converting {src}")
    known = "torchvision" if name.endswith("-torchvision") and not url else None
    convert(src, out, arch=entry["arch"], keep_classifier=keep_classifier, log=log, convention=known,
            reason=f"release: fetch {name} (download.pytorch.org's torchvision weights)" if known else None)
    return out


def _verified(path, entry, log):
    try:
        _verify(path, entry)
        return True
    except MiniVGGError as e:
        log(f"re-downloading: {e}")
        return False


def _verify(path, entry):
    where = os.path.basename(path)
    n = os.path.getsize(path)
    if "size" in entry and n != entry["size"]:
        raise MiniVGGError(f"{where}: downloaded {n} bytes, the published size is {entry['size']} (truncated or wrong file)")
    md5, sha = hashlib.md5(), hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(CHUNK), b""):
            md5.update(block)
            sha.update(block)
    if "md5" in entry and md5.hexdigest() != entry["md5"]:
        raise MiniVGGError(f"{where}: MD5 checksum {md5.hexdigest()} does not match the published {entry['md5']} (corrupt download)")
    if "sha256" in entry and sha.hexdigest() != entry["sha256"]:
        raise MiniVGGError(f"{where}: SHA-256 checksum {sha.hexdigest()} does not match the expected {entry['sha256']} (corrupt download)")
    if "sha256_prefix" in entry and not sha.hexdigest().startswith(entry["sha256_prefix"]):
        raise MiniVGGError(
            f"{where}: SHA-256 checksum {sha.hexdigest()[:16]}... does not start with {entry['sha256_prefix']} as its name says (corrupt download)"
        )


def _download(url, dest, entry, progress, log):
    """Download ``url`` to ``dest`` via ``dest.part``, resuming a partial one; verify."""
    part = dest + ".part"
    have = os.path.getsize(part) if os.path.exists(part) else 0
    if "size" in entry and have > entry["size"]:
        os.remove(part)
        have = 0
    req = urllib.request.Request(url, headers={"User-Agent": "minivgg-weights-tools"})
    if have:
        req.add_header("Range", f"bytes={have}-")
        log(f"resuming {url} at byte {have}")
    else:
        log(f"downloading {url}")
    try:
        resp = urllib.request.urlopen(req, timeout=60)
    except urllib.error.HTTPError as e:
        if e.code == 416 and have:  # range not satisfiable: the part may already be complete
            resp = None
        else:
            raise MiniVGGError(f"{url}: download failed (HTTP {e.code} {e.reason})") from None
    except (urllib.error.URLError, OSError, http.client.HTTPException, ValueError) as e:
        reason = getattr(e, "reason", e)
        raise MiniVGGError(f"{url}: download failed ({reason})") from None
    if resp is not None:
        with resp:
            status = getattr(resp, "status", 200)
            if have and status != 206:
                have = 0  # server ignored the Range header: start over
            length = resp.headers.get("Content-Length")
            total = have + int(length) if length and length.isdigit() else entry.get("size")
            mode = "ab" if have else "wb"
            got = have
            bar = _bar(total, have, os.path.basename(dest), progress)
            try:
                with open(part, mode) as f:
                    while True:
                        try:
                            block = resp.read(CHUNK)
                        except (OSError, ValueError, http.client.HTTPException) as e:  # connection reset, IncompleteRead
                            raise MiniVGGError(
                                f"{url}: download interrupted after {got} bytes ({type(e).__name__}); run the command again to resume"
                            ) from None
                        if not block:
                            break
                        f.write(block)
                        got += len(block)
                        if bar is not None:
                            bar.update(len(block))
            finally:
                if bar is not None:
                    bar.close()
            if total is not None and got < total:
                raise MiniVGGError(f"{url}: download truncated at {got} of {total} bytes; run the command again to resume")
    try:
        _verify(part, entry)
    except MiniVGGError as e:
        os.remove(part)
        msg = str(e).replace(os.path.basename(part), os.path.basename(dest))
        raise MiniVGGError(msg + "; the download was deleted") from None
    os.replace(part, dest)


def _bar(total, initial, desc, progress):
    if not progress:
        return None
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    return tqdm(total=total, initial=initial, unit="B", unit_scale=True, unit_divisor=1024, desc=desc, leave=False, disable=None)
