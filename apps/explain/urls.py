from django.urls import path

from apps.explain import views

app_name = "explain"

urlpatterns = [
    path("images/<int:image_pk>/request/", views.request_method, name="request"),
    path("<int:pk>/retry/", views.retry, name="retry"),
    path("<int:pk>/overlay.png", views.overlay, name="overlay"),
    path("<int:pk>/layer.png", views.layer, name="layer"),
    path("<int:pk>/heatmap.npy", views.heatmap, name="heatmap"),
]
