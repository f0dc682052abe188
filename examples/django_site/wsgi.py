"""WSGI entry point of the example Django project.

Run it from the repository root:

    DJANGO_SECRET_KEY=... greenserve examples.django_site.wsgi:application

(DJANGO_RANDOM_SECRET_KEY=1 instead of the key to try it out; see settings.py).
"""

import os

from django.core.wsgi import get_wsgi_application

from examples import limits
from examples.chunked_bodies import with_length

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "examples.django_site.settings")

django_application = get_wsgi_application()


# Django reads no body without CONTENT_LENGTH, and does not limit the size of file uploads:
# see examples/chunked_bodies.py.
application = with_length(django_application, limits.BODY_LIMITS)
