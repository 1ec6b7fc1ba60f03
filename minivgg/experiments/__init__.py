"""The experiments: the layer atlas (``minivgg atlas``) and the parameter sweeps
(``minivgg sweep``), and what they share.

- ``params``: the parameters a run ("cell") takes, their defaults and checks;
- ``execute``: running cells in this process, in local worker processes or on a Dask
  cluster, with a progress bar;
- ``records``: the CSV and PNG files that come out, each written atomically;
- ``pictures``: drawing: a labeled contact sheet, loss curves;
- ``atlas``, ``sweep``: the two commands.

Dependencies go one way: atlas and sweep use the four others, which do not use each
other. docs/experiments.md describes the experiments and how to reproduce each one.
"""


def add_parser(subparsers):
    """Add ``atlas`` and ``sweep`` to the CLI's sub-parsers (minivgg.cli lists this
    package in EXTENSION_MODULES)."""
    from . import atlas, sweep

    atlas.add_parser(subparsers)
    sweep.add_parser(subparsers)
