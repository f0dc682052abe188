"""An app that refuses to start, as many do when a setting is missing."""

import sys

sys.exit("DATABASE_URL is not set")
