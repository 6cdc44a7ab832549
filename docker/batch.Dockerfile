# syntax=docker/dockerfile:1
# Batch image: `python -m batch` with the in-process engines and the
# transformer's decoding and both databases (SQLite, PostgreSQL via psycopg 3).
# Built from the repository root:
#   docker build -f docker/batch.Dockerfile -t ghcr.io/example/image-classifier-batch:0.1.0 .
# On the default base (torch with CUDA) it runs every engine, TorchScript on a
# GPU included, with docker/predictor.Dockerfile's torch rule. On a base
# without torch (a plain Python, or the Debian base `make image-test` builds)
# it runs ONNX Runtime and OpenVINO repositories: the CPU overlay's OpenVINO
# INT8 is one.
ARG BASE_IMAGE=pytorch/pytorch:2.13.0-cuda12.8-cudnn9-runtime
FROM ${BASE_IMAGE}
# The CA bundle pip trusts during the build (a proxy's, say); not kept in the image.
ARG PIP_CERT

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HOME=/tmp \
    XDG_CACHE_HOME=/tmp/.cache \
    TORCH_HOME=/tmp/torch

COPY pyproject.toml README.md /tmp/src/
COPY common /tmp/src/common
COPY runtime /tmp/src/runtime
COPY vision /tmp/src/vision
COPY groundtruth /tmp/src/groundtruth
COPY batch /tmp/src/batch

# The base's torch, where it has one, is kept (and pinned, as in the predictor
# image); without one, none is installed.
RUN [ -n "${PIP_CERT:-}" ] || unset PIP_CERT; \
    python3 -m venv --system-site-packages /opt/venv \
 && (/opt/venv/bin/python -c "import importlib.metadata as m; print('torch==' + m.version('torch'))" \
        2>/dev/null || true) > /tmp/keep-base-torch.txt \
 && /opt/venv/bin/pip install --no-cache-dir -c /tmp/keep-base-torch.txt '/tmp/src[batch,onnx,openvino]' \
 && rm -rf /tmp/src /tmp/keep-base-torch.txt \
 && /opt/venv/bin/python -c "import onnxruntime, openvino, sqlalchemy, psycopg, batch.local"
ENV VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:/opt/conda/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin

RUN getent passwd 1000 >/dev/null \
 || useradd --uid 1000 --user-group --no-create-home --home-dir /tmp --shell /usr/sbin/nologin app
USER 1000:1000
WORKDIR /tmp

ENTRYPOINT ["python", "-m", "batch"]
