# The API image: FastAPI + Celery client, no torch (design: the API never imports the model).
# Also runs the torch-free services: `unipic migrate`, `unipic sweeper` (webhook worker + beat).
# Build from the repository root: docker build -f docker/api.Dockerfile -t unipic-api .
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /app

# the locked set first (its own layer: rebuilt only when the lock changes), then the project without resolving
COPY requirements/api.txt /app/requirements/api.txt
RUN pip install --require-hashes --no-deps -r requirements/api.txt && pip check
COPY . /app
RUN pip install --no-deps --no-build-isolation . \
    && python -c "import api.app, sys; assert 'torch' not in sys.modules, 'the API image must not need torch'" \
    && useradd --create-home --uid 10001 unipic
USER unipic

EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=5s --start-period=20s --retries=6 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=4)"]
CMD ["unipic", "api", "--host", "0.0.0.0", "--port", "8000"]
