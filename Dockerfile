# One image for every process of the production shape (web, workers, beat).
FROM python:3.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /app

# Tesseract OCR: the burned-in text check of uploads (CXR_TEXT_CHECK, docs/input-safety.md).
RUN apt-get update && apt-get install -y --no-install-recommends tesseract-ocr \
    && rm -rf /var/lib/apt/lists/*
COPY pyproject.toml requirements.lock README.md ./
# Extra pip options; empty (the default): from PyPI. deploy/offline/build.sh installs from
# a wheelhouse built on the host and mounted for this step only:
#   --build-arg PIP_INSTALL_ARGS="--no-index --find-links /wheelhouse"
ARG PIP_INSTALL_ARGS=""
RUN pip install --no-cache-dir $PIP_INSTALL_ARGS -c requirements.lock . \
    && useradd --create-home --uid 1000 cxr
COPY . .
# The storage's directory mode (FILE_UPLOAD_DIRECTORY_PERMISSIONS, 0700) applies to
# collectstatic's folders too: make them readable by the cxr user that serves them.
RUN DEBUG=1 python manage.py collectstatic --noinput \
    && chmod -R a+rX /app/var/static \
    && mkdir -p /data/media /data/var && chown -R cxr /data

USER cxr
ENV MEDIA_ROOT=/data/media CXR_VAR_DIR=/data/var STATIC_ROOT=/app/var/static
EXPOSE 8000
CMD ["gunicorn", "-c", "deploy/gunicorn.conf.py", "cxrplatform.wsgi:application"]
