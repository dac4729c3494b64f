"""Allow ``python -m latprune.cli``."""

import sys

from latprune.cli import main

sys.exit(main())
