"""`python -m serving --model-dir DIR [options]` (what start.sh runs)."""

import sys

from .cli import main

sys.exit(main())
