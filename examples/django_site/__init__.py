"""A minimal Django project served by greenserve (see settings.py for DJANGO_SECRET_KEY):

    DJANGO_SECRET_KEY=... greenserve examples.django_site.wsgi:application
"""
