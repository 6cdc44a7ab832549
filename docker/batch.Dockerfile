# syntax=docker/dockerfile:1
# Batch image: `python -m batch` with the in-process engines (TorchScript, ONNX Runtime and
# OpenVINO, as the predictor's; the default CPU repository is OpenVINO INT8) and the
# transformer's decoding and both databases (SQLite, PostgreSQL via psycopg 3). Built from
# the repository root:
#   docker build -f docker/batch.Dockerfile -t ghcr.io/example/image-classifier-batch:0.1.0 .
# Same base and torch rule as docker/predictor.Dockerfile (torch comes from the base image).
ARG BASE_IMAGE=pytorch/pytorch:2.7.1-cuda12.8-cudnn9-runtime
FROM ${BASE_IMAGE}

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

RUN python -c "import importlib.metadata as m; print('torch==' + m.version('torch'))" \
        > /tmp/keep-base-torch.txt \
 && pip install --no-cache-dir -c /tmp/keep-base-torch.txt '/tmp/src[batch,onnx,openvino]' \
 && rm -rf /tmp/src /tmp/keep-base-torch.txt \
 && python -c "import torch, onnxruntime, openvino, sqlalchemy, psycopg, batch.local"

RUN getent passwd 1000 >/dev/null \
 || useradd --uid 1000 --user-group --no-create-home --home-dir /tmp --shell /usr/sbin/nologin app
USER 1000:1000
WORKDIR /tmp

ENTRYPOINT ["python", "-m", "batch"]
