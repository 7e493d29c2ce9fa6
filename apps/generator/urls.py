from django.urls import path

from apps.generator import views

app_name = "generator"

urlpatterns = [
    path("", views.index, name="index"),
    path("grids/<int:pk>/", views.grid_detail, name="grid"),
    path("grids/<int:pk>/grid.png", views.grid_image, name="image"),
]
