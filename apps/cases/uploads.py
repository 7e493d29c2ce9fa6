"""The request body limit: an upload handler that stops reading at the limit.

Django's DATA_UPLOAD_MAX_MEMORY_SIZE does not count files, so without this a
multipart request of any size is read to the end and its files written to
temporary files before a view can refuse them. ``LimitedUploadHandler`` runs
first among the upload handlers (settings.FILE_UPLOAD_HANDLERS):

- a request whose Content-Length is over ``CXR_MAX_REQUEST_BYTES`` is refused
  before any of its body is read (``RequestTooLarge``);
- a file that grows past ``CXR_MAX_UPLOAD_BYTES`` stops the upload at that
  chunk (``FileTooLarge``, which names the file).

Both are ``RequestDataTooBig``: the API answers 413 with the message
(apps.api.exceptions), the upload page too (apps.cases.views), and any other
view gets Django's 400. The proxy in front should refuse the same size first
(nginx ``client_max_body_size``, docs/operations.md).
"""

from __future__ import annotations

from django.conf import settings
from django.core.exceptions import RequestDataTooBig
from django.core.files.uploadhandler import FileUploadHandler


def _human_bytes(n: int) -> str:
    return f"{n / (1024 * 1024):.0f} MB" if n >= 1024 * 1024 else f"{n} bytes"


class RequestTooLarge(RequestDataTooBig):
    """The request body declares more bytes than CXR_MAX_REQUEST_BYTES."""


class FileTooLarge(RequestDataTooBig):
    """One uploaded file grew past CXR_MAX_UPLOAD_BYTES; ``filename`` and ``problem``
    read like an upload refusal (apps.cases.validation.UploadRejected)."""

    def __init__(self, filename: str, problem: str) -> None:
        self.filename = filename
        self.problem = problem
        super().__init__(f"{filename}: {problem}")


class LimitedUploadHandler(FileUploadHandler):
    """Counts what is read and raises at the limits; stores nothing itself (the
    handlers after it keep the files)."""

    def handle_raw_input(self, input_data, META, content_length, boundary, encoding=None):  # noqa: N803 - Django's signature
        limit = settings.CXR_MAX_REQUEST_BYTES
        if content_length and content_length > limit:
            raise RequestTooLarge(
                f"The request body is {_human_bytes(content_length)}; the limit is "
                f"{_human_bytes(limit)} (CXR_MAX_REQUEST_BYTES). Nothing was stored."
            )
        return None

    def receive_data_chunk(self, raw_data: bytes, start: int) -> bytes:
        limit = settings.CXR_MAX_UPLOAD_BYTES
        if start + len(raw_data) > limit:
            raise FileTooLarge(
                self.file_name or "unnamed file",
                f"the file is more than {_human_bytes(limit)} (the upload stopped there); "
                f"the limit is {_human_bytes(limit)}.",
            )
        return raw_data

    def file_complete(self, file_size: int) -> None:
        return None
