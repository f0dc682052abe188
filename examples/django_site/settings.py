"""Settings for the example Django project (no database, no templates, no static files).

Run it from the repository root:  greenserve examples.django_site.wsgi:application
Set DJANGO_DEBUG=1 for Django's debug pages; it is off by default, as in production.
"""

import os

# A real deployment sets DJANGO_SECRET_KEY; the fallback only keeps the example runnable.
SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "greenserve-example-not-a-secret")
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
