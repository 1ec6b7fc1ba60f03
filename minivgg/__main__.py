"""``python -m minivgg <command>``: see minivgg/cli/ and docs/cli.md."""

import sys

from .cli import main

sys.exit(main())
