"""``python -m minivgg <command>``: see minivgg/cli.py and docs/cli.md."""

import sys

from .cli import main

sys.exit(main())
