"""`python -m bench.cli` = `bench`."""

import sys

from bench.cli import main

sys.exit(main())
