"""``python -m weights_tools`` (console script ``minivgg-weights``): convert, fetch, inspect, normalize.

A problem with the user's input prints ``error: <file>: <problem>`` on one line to
stderr and exits with status 2; no output file is left behind (every file is written
to a temporary name and renamed when complete).
"""

import argparse
import os
import sys
import warnings

from minivgg.errors import MiniVGGError


def _log(msg):
    sys.stderr.write(msg + "\n")


def build_parser():
    from .fetch import SOURCES

    p = argparse.ArgumentParser(
        prog="python -m weights_tools",
        description="Convert, fetch, inspect and normalize pretrained VGG-16/19 weights for minivgg.",
    )
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    c = sub.add_parser("convert", help="convert a Caffe / torchvision / Keras / MatConvNet / ONNX file to minivgg HDF5")
    c.add_argument("src", metavar="SRC", help="the source weights file (format detected from its content)")
    c.add_argument("--out", "-o", required=True, metavar="DST.h5", help="the HDF5 file to write")
    c.add_argument("--arch", choices=("vgg16", "vgg19"), help="expected architecture (default: from the file)")
    c.add_argument("--keep-classifier", action="store_true", help="keep fc6, fc7, fc8 (needed by classify)")
    c.add_argument("--convention", choices=("caffe", "torchvision", "matconvnet"),
                   help="the input convention the weights were trained with (default: recognized from the values,"
                        " else the format's usual one; required for an unrecognized ONNX model)")
    c.add_argument("--force", action="store_true", help="overwrite DST if it exists")

    f = sub.add_parser("fetch", help="download, verify and convert published weights into the cache")
    f.add_argument("name", metavar="NAME", nargs="?", help="one of: " + ", ".join(SOURCES))
    f.add_argument("--dir", help="where to put the result (default: $MINIVGG_HOME or ~/.cache/minivgg)")
    f.add_argument("--keep-classifier", action="store_true", help="keep fc6, fc7, fc8 in the converted file")
    f.add_argument("--base-url", help="a mirror: replaces the directory of the official URLs ($MINIVGG_FETCH_BASE)")
    f.add_argument("--url", help="download from this URL instead (give --md5 or --sha256 to check it)")
    f.add_argument("--md5", help="expected MD5 of the download (replaces the published checksum)")
    f.add_argument("--sha256", help="expected SHA-256 of the download (replaces the published checksum)")
    f.add_argument("--size", type=int, help="expected size in bytes of the download")
    f.add_argument("--force", action="store_true", help="fetch and convert again even if the result exists")
    f.add_argument("--list", action="store_true", help="list the names that can be fetched")
    f.add_argument("--no-progress", action="store_true", help="no progress bar")

    i = sub.add_parser("inspect", help="show format, arch, layers, input convention and checksums of a file")
    i.add_argument("file", metavar="FILE")

    n = sub.add_parser("normalize", help="Gatys normalization: mean activation 1 for every conv filter")
    n.add_argument("src", metavar="IN.h5")
    n.add_argument("--images", nargs="+", metavar="PATH", help="images or directories (default: built-in sample photos)")
    n.add_argument("--out", "-o", required=True, metavar="OUT.h5")
    n.add_argument("--size", type=int, default=224, help="resize images so the shorter side is SIZE (0: keep; default 224)")
    n.add_argument("--pooling", choices=("max", "avg"), default="max", help="pooling while measuring (default max, as trained)")
    n.add_argument("--device", default="cpu", help="cpu, gpu or emulated")
    n.add_argument("--force", action="store_true", help="overwrite OUT if it exists")
    return p


def _check_out(path, force):
    if os.path.exists(path) and not force:
        raise MiniVGGError(f"{path}: exists; use --force to overwrite")


def run(args):
    if args.command == "convert":
        from .convert import convert

        _check_out(args.out, args.force)
        meta = convert(args.src, args.out, arch=args.arch, keep_classifier=args.keep_classifier,
                       convention=args.convention, log=_log)
        c = meta["convention"]
        print(f"wrote {args.out}: {meta['arch']} from {meta['source_format']} ({c['channel_order']}, white = {c['scale']:g};"
              f" convention {meta['convention_decided']})")
    elif args.command == "fetch":
        from .fetch import SOURCES, fetch

        if args.list or not args.name:
            for k, v in SOURCES.items():
                print(f"{k:<20} {v['urls'][0]}")
            return 0
        out = fetch(args.name, dest_dir=args.dir, keep_classifier=args.keep_classifier, base_url=args.base_url,
                    url=args.url, md5=args.md5, sha256=args.sha256, size=args.size, force=args.force,
                    progress=not args.no_progress, log=_log)
        print(out)
    elif args.command == "inspect":
        from .inspect import describe

        print(describe(args.file))
    elif args.command == "normalize":
        from .normalize import normalize

        _check_out(args.out, args.force)
        means = normalize(args.src, args.out, image_paths=args.images, size=args.size, pooling=args.pooling,
                          device=args.device, log=_log)
        print(f"wrote {args.out}: normalized {len(means)} conv layers")
    return 0


def main(argv=None):
    args = build_parser().parse_args(argv)
    try:
        with warnings.catch_warnings():
            # library warnings (numpy overflow, Pillow's decompression bomb, h5py) would
            # print lines around our one error line; what matters is checked and raised
            warnings.simplefilter("ignore")
            return run(args)
    except MiniVGGError as e:
        sys.stderr.write(f"error: {e}\n")
        return 2
    except BrokenPipeError:  # output piped into e.g. head, which closed early
        try:
            sys.stdout = open(os.devnull, "w")
        except OSError:
            pass
        return 0
    except KeyboardInterrupt:
        sys.stderr.write("error: interrupted\n")
        return 130
    except MemoryError:
        sys.stderr.write("error: out of memory\n")
        return 2
