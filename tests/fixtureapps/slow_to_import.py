"""An app module that takes a minute to import, for interrupting greenserve while it loads.

"IMPORTING" on stderr tells the test the import has begun.
"""

import sys
import time

sys.stderr.write("IMPORTING\n")
sys.stderr.flush()
time.sleep(60)
app = None
