from django.urls import path

from apps.reading import views

app_name = "reading"

urlpatterns = [
    path("", views.worklist, name="worklist"),
    path("cases/<int:pk>/", views.study, name="study"),
    path("cases/<int:pk>/sign/", views.sign, name="sign"),
    path("cases/<int:pk>/report/", views.report_page, name="report"),
    path("cases/<int:pk>/report.pdf", views.report_pdf, name="report-pdf"),
    path("images/<int:pk>/file/", views.image_file, name="image-file"),
    path("images/<int:pk>/lungs.png", views.lung_outline, name="lung-outline"),
    path("images/<int:pk>/dicom/", views.dicom_download, name="dicom"),
    path("explanations/<int:pk>/layer.png", views.heat_layer, name="heat-layer"),
    path("images/<int:pk>/values/", views.dicom_values, name="values"),
    path("images/<int:pk>/meta/", views.dicom_meta, name="meta"),
]
