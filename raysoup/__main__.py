"""`python -m raysoup ...`: the same as the `raysoup` command."""

import sys

from raysoup.cli import main

sys.exit(main())
