"""An app module whose import waits until the test says so: it opens the FIFO named by
GS_TEST_RELEASE and reads it to the end, which comes when the test has opened it for
writing and closed it again (``release_importers`` in the tests).

"IMPORTING" on stderr tells the test the import has begun.
"""

import os
import sys

sys.stderr.write("IMPORTING\n")
sys.stderr.flush()
with open(os.environ["GS_TEST_RELEASE"], "rb") as release:
    release.read()


def app(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"loaded\n"]
