"""``python -m layercore.cli``: the command line of ``layercore`` and ``python -m layercore``."""

import sys

from layercore.cli import main

sys.exit(main())
