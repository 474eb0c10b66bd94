"""`python -m serving --model-dir DIR [options]` (what start.sh runs)."""

import sys

from serving.cli import main

sys.exit(main())
