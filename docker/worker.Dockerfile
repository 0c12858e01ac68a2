# The model worker image: CUDA torch + the model. One worker process per GPU (`unipic worker --device cuda:0`).
# Build from the repository root: docker build -f docker/worker.Dockerfile -t unipic-worker .
# The CUDA runtime comes inside the torch wheels; the host needs only the NVIDIA driver + container toolkit.
FROM python:3.11-slim

ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128
ARG TORCH_VERSION=2.13.0
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HF_HOME=/models
WORKDIR /app

# the locked set first (requirements/worker.txt holds torch's own dependencies too), then torch from its CUDA
# index (exactly pinned; it adds only the nvidia-* packages it pins itself), then the project without resolving
COPY requirements/worker.txt /app/requirements/worker.txt
RUN pip install --require-hashes --no-deps -r requirements/worker.txt
RUN pip install "torch==${TORCH_VERSION}" --index-url "${TORCH_INDEX_URL}" && pip check
COPY . /app
RUN pip install --no-deps --no-build-isolation . \
    && useradd --create-home --uid 10001 unipic \
    && mkdir -p /models && chown unipic /models
USER unipic
VOLUME ["/models"]

CMD ["unipic", "worker", "--device", "cuda:0"]
