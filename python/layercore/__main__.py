"""``python -m layercore``: the command line, for when the console script is not on PATH."""

import sys

from layercore.cli import main

sys.exit(main())
