"""python -m loadtests: the harness's command line."""

import sys

from loadtests.cli import main

sys.exit(main())
