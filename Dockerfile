# One image for every process of the production shape (web, workers, beat).
FROM python:3.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /app

# Tesseract OCR: the burned-in text check of uploads (CXR_TEXT_CHECK, docs/input-safety.md).
RUN apt-get update && apt-get install -y --no-install-recommends tesseract-ocr \
    && rm -rf /var/lib/apt/lists/*
COPY pyproject.toml requirements.lock README.md ./
RUN pip install --no-cache-dir -c requirements.lock . \
    && useradd --create-home --uid 1000 cxr
COPY . .
RUN DEBUG=1 python manage.py collectstatic --noinput \
    && mkdir -p /data/media /data/var && chown -R cxr /data

USER cxr
ENV MEDIA_ROOT=/data/media CXR_VAR_DIR=/data/var STATIC_ROOT=/app/var/static
EXPOSE 8000
CMD ["gunicorn", "-c", "deploy/gunicorn.conf.py", "cxrplatform.wsgi:application"]
