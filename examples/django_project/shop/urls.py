from django.urls import path

from . import views

urlpatterns = [path("predict", views.predict_view), path("quick", views.quick),
               path("hang", views.hang)]
