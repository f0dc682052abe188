"""A minimal Django project served by greenserve: greenserve examples.django_site.wsgi:application"""
