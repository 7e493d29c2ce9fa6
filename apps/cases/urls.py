from django.urls import path

from apps.cases import views

app_name = "cases"

urlpatterns = [
    path("", views.case_list, name="list"),
    path("new/", views.case_create, name="create"),
    path("<int:pk>/", views.case_detail, name="detail"),
    path("images/<int:pk>/file/", views.image_file, name="image-file"),
    path("images/<int:pk>/lungs/<str:kind>.png", views.lung_file, name="lung-file"),
    path("labelling/", views.label_queue, name="label-queue"),
    path("images/<int:pk>/label/", views.label_submit, name="label"),
]
