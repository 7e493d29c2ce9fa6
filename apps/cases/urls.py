from django.urls import path

from apps.cases import retention_views, retry_views, views

app_name = "cases"

urlpatterns = [
    path("", views.case_list, name="list"),
    path("new/", views.case_create, name="create"),
    path("<int:pk>/", views.case_detail, name="detail"),
    path("<int:pk>/delete/", retention_views.case_delete, name="delete"),
    path("erasure/", retention_views.erasure, name="erasure"),
    path("images/<int:pk>/file/", views.image_file, name="image-file"),
    path("images/<int:pk>/release/", views.image_release, name="image-release"),
    # One retry view for every kind of job on a case image; the image-keyed URLs the case
    # page posts to are the same view.
    path("jobs/<str:label>/<int:pk>/retry/", retry_views.job_retry, name="job-retry"),
    path(
        "images/<int:pk>/prediction/retry/",
        retry_views.job_retry,
        {"label": "cases.prediction", "of_image": True},
        name="prediction-retry",
    ),
    path(
        "images/<int:pk>/segmentation/retry/",
        retry_views.job_retry,
        {"label": "cases.segmentation", "of_image": True},
        name="segmentation-retry",
    ),
    path("images/<int:pk>/lungs/<str:kind>.png", views.lung_file, name="lung-file"),
    path("images/<int:pk>/ct/<str:kind>.png", views.ct_layer, name="ct-layer"),
    path("labelling/", views.label_queue, name="label-queue"),
    path("labelling/mine/", views.my_verdicts, name="my-verdicts"),
    path("labelling/policy/", views.label_policy, name="label-policy"),
    # Readers' pages and the files they load name an image by its opaque reference
    # (apps.cases.access.image_ref), never by its id: no ids to count or to group by
    # case. The id-keyed file routes above are the case owner's.
    path("labelling/<str:ref>/", views.label_image, name="label"),
    path("labelling/<str:ref>/file/", views.reader_image_file, name="reader-image-file"),
    path(
        "labelling/<str:ref>/lungs/<str:kind>.png",
        views.reader_lung_file,
        name="reader-lung-file",
    ),
    path("adjudication/", views.adjudication_list, name="adjudication"),
    path("adjudication/<str:ref>/", views.adjudicate, name="adjudicate"),
    path("agreement/", views.agreement_page, name="agreement"),
    path("agreement.csv", views.agreement_csv, name="agreement-csv"),
]
