"""WSGI entry point of the example Django project.

Run it from the repository root:  greenserve examples.django_site.wsgi:application
"""

import os
import shutil
import tempfile

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "examples.django_site.settings")

django_application = get_wsgi_application()


def application(environ, start_response):
    """Django, plus support for chunked request bodies.

    greenserve decodes a chunked request body itself: wsgi.input ends where the body ends
    (wsgi.input_terminated is True) and there is no CONTENT_LENGTH. Django reads exactly
    CONTENT_LENGTH bytes and treats a missing one as an empty body, so request.body,
    request.POST and request.FILES would all be empty. Spool such a body (in memory up to
    1 MiB, then in a temporary file) and give Django its length.
    """
    if (environ.get("wsgi.input_terminated") and "CONTENT_LENGTH" not in environ
            and environ["REQUEST_METHOD"] not in ("GET", "HEAD")):
        body = tempfile.SpooledTemporaryFile(max_size=1 << 20)
        shutil.copyfileobj(environ["wsgi.input"], body)
        environ["CONTENT_LENGTH"] = str(body.tell())
        body.seek(0)
        environ["wsgi.input"] = body
        environ.pop("HTTP_TRANSFER_ENCODING", None)
    return django_application(environ, start_response)
