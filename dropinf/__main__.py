"""Entry point of ``python -m dropinf``."""

import sys

from dropinf.cli import main

sys.exit(main())
