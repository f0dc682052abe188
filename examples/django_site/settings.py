"""Settings for the example Django project (no database, no templates, no static files).

Run it from the repository root, with a secret key in the environment:

    DJANGO_SECRET_KEY=... greenserve examples.django_site.wsgi:application

or, only to try it out, DJANGO_RANDOM_SECRET_KEY=1 instead of the key. Set DJANGO_DEBUG=1 for
Django's debug pages; it is off by default, as in production.
"""

import os
import secrets
import sys

from django.core.exceptions import ImproperlyConfigured

# Django signs sessions, password-reset links and signed cookies with SECRET_KEY: a constant
# written here would be known to anyone who has read this file, so there is no fallback.
SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "")
if not SECRET_KEY:
    if os.environ.get("DJANGO_RANDOM_SECRET_KEY") != "1":
        raise ImproperlyConfigured(
            "DJANGO_SECRET_KEY is not set: give it a long random value (python3 -c 'import "
            "secrets; print(secrets.token_urlsafe(50))'), or set DJANGO_RANDOM_SECRET_KEY=1 "
            "to try the example with a throwaway key")
    # Development only: unguessable, but each process (each worker) draws its own and a
    # restart draws a new one, so nothing signed survives a restart or crosses workers.
    SECRET_KEY = secrets.token_urlsafe(50)
    sys.stderr.write("examples.django_site: DJANGO_RANDOM_SECRET_KEY=1: using a random "
                     "SECRET_KEY for this process only (development only; set "
                     "DJANGO_SECRET_KEY in production)\n")
DEBUG = os.environ.get("DJANGO_DEBUG", "") == "1"
# The Host header is checked against this list (with DEBUG off, anything else gets 400).
ALLOWED_HOSTS = ["127.0.0.1", "localhost", "[::1]"]

ROOT_URLCONF = "examples.django_site.urls"
WSGI_APPLICATION = "examples.django_site.wsgi.application"

# Nothing here needs models, sessions or the admin, so no apps and no database.
INSTALLED_APPS = []
DATABASES = {}
TEMPLATES = []

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
]

# Request bodies: wsgi.py caps each route's whole body (examples/limits.py); these are
# Django's own ceilings for what it holds in memory, set explicitly rather than inherited.
DATA_UPLOAD_MAX_MEMORY_SIZE = 1 << 20      # a body read as request.body or form fields
FILE_UPLOAD_MAX_MEMORY_SIZE = 256 << 10    # an uploaded file larger than this goes to disk
DATA_UPLOAD_MAX_NUMBER_FIELDS = 100
DATA_UPLOAD_MAX_NUMBER_FILES = 10

USE_TZ = True
# Django sets the process time zone (TZ) from this; UTC keeps the server log stamps in UTC.
TIME_ZONE = "UTC"
DEFAULT_CHARSET = "utf-8"
