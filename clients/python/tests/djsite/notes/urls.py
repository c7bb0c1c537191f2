from django.urls import path

from . import views

urlpatterns = [
    path("notes/", views.notes),
    path("notes/add/", views.add),
    path("notes/boom/", views.boom),
    path("notes/switch/", views.switch),
    path("notes/missing/", views.missing),
    path("notes/caught/", views.caught),
]
