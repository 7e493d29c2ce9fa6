from rest_framework import pagination
from rest_framework.exceptions import ValidationError


def _positive_int(request, name: str) -> int | None:
    raw = request.query_params.get(name)
    if raw in (None, ""):
        return None
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if value < 1:
        raise ValidationError({name: [f"{raw!r} is not a positive whole number."]})
    return value


class PageNumberPagination(pagination.PageNumberPagination):
    """``?page=N&page_size=M``. The page size is capped (silently) so one request stays
    cheap; a page or page size that is not a positive number is a 400, a page past
    the end a 404."""

    page_size = 20
    page_size_query_param = "page_size"
    max_page_size = 100
    last_page_strings = ()

    def get_page_size(self, request) -> int:
        size = _positive_int(request, self.page_size_query_param)
        return self.page_size if size is None else min(size, self.max_page_size)

    def paginate_queryset(self, queryset, request, view=None):
        _positive_int(request, self.page_query_param)
        return super().paginate_queryset(queryset, request, view)
