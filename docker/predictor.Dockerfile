# syntax=docker/dockerfile:1
# Predictor image: the kserve ModelServer running the TorchScript classifier on
# the GPU (and the CPU engines for ONNX and OpenVINO repositories). Built from
# the repository root:
#   docker build -f docker/predictor.Dockerfile -t ghcr.io/example/image-classifier-predictor:0.1.0 .
# The model is not baked in: KServe's storage initializer downloads the model
# repository to /mnt/models (see manifests/). For CPU nodes,
# docker/predictor-cpu.Dockerfile is the same server without torch.

# CUDA-enabled torch comes from the base image, not from pip: the project's
# `predictor` extra (torch from PyPI) is deliberately not installed here.
# TorchScript files load in the same or a newer torch only, and `make
# model-repo` exports with torch 2.13 (constraints-cpu.txt): the base's torch
# must be at least that. The export records its torch in config.pbtxt
# (exported_with_torch) and the predictor refuses an older runtime at load with
# a message saying so, rather than failing inside torch.jit.load.
ARG BASE_IMAGE=pytorch/pytorch:2.13.0-cuda12.8-cudnn9-runtime
FROM ${BASE_IMAGE}
# The CA bundle pip trusts during the build (a proxy's, say); not kept in the image.
ARG PIP_CERT

# HOME and the caches point at /tmp: the root filesystem is read-only at run
# time and /tmp is the pod's emptyDir.
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
COPY predictor /tmp/src/predictor

# A venv over the base's Python that sees the base's packages (its torch), so
# whatever the base's pip is, ours is the venv's. The constraint pins torch to
# the base image's build, so a dependency that asks for torch fails the build
# instead of silently swapping in a CPU wheel.
RUN [ -n "${PIP_CERT:-}" ] || unset PIP_CERT; \
    python3 -m venv --system-site-packages /opt/venv \
 && /opt/venv/bin/python -c "import importlib.metadata as m; print('torch==' + m.version('torch'))" \
        > /tmp/keep-base-torch.txt \
 && /opt/venv/bin/pip install --no-cache-dir -c /tmp/keep-base-torch.txt "/tmp/src[serve,onnx,openvino]" \
 && rm -rf /tmp/src /tmp/keep-base-torch.txt \
 && /opt/venv/bin/python -c "import torch, kserve, onnxruntime, predictor; assert torch.version.cuda, 'torch without CUDA'"
ENV VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:/opt/conda/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin

# Numeric uid/gid so the kubelet can verify runAsNonRoot.
RUN getent passwd 1000 >/dev/null \
 || useradd --uid 1000 --user-group --no-create-home --home-dir /tmp --shell /usr/sbin/nologin app
USER 1000:1000
WORKDIR /tmp

# 8080 REST (pod-internal), 8081 V2 gRPC (the container port the manifests expose).
EXPOSE 8080 8081
ENTRYPOINT ["python", "-m", "predictor"]
