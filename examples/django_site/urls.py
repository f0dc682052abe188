"""URL routes of the example Django project."""

from django.urls import path

from . import views

urlpatterns = [
    path("", views.index),
    path("text", views.text),
    path("form", views.form),
    path("json", views.json_echo),
    path("upload", views.upload),
    path("stream", views.stream),
    path("redirect", views.to_text),
]
