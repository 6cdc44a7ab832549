# syntax=docker/dockerfile:1
# CPU predictor image: the predictor with its CPU engines, ONNX Runtime and
# OpenVINO, and no torch: a small image for CPU nodes, serving repositories
# that are not TorchScript (`make model-repo-openvino`, `python -m modelbuild
# onnx`). The `cpu` overlay runs it. Built from the repository root:
#   docker build -f docker/predictor-cpu.Dockerfile -t ghcr.io/example/image-classifier-predictor-cpu:0.1.0 .
# A TorchScript repository needs docker/predictor.Dockerfile (torch with CUDA).
# Any base with Python 3.11 and its venv module builds it (see
# docker/transformer.Dockerfile).
ARG BASE_IMAGE=python:3.11.13-slim-bookworm
FROM ${BASE_IMAGE}
# The CA bundle pip trusts during the build (a proxy's, say); not kept in the image.
ARG PIP_CERT

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HOME=/tmp \
    XDG_CACHE_HOME=/tmp/.cache \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin

COPY pyproject.toml README.md /tmp/src/
COPY common /tmp/src/common
COPY runtime /tmp/src/runtime
COPY predictor /tmp/src/predictor

# The build fails if anything pulled torch in.
RUN [ -n "${PIP_CERT:-}" ] || unset PIP_CERT; \
    python3 -m venv /opt/venv \
 && pip install --no-cache-dir "/tmp/src[serve,onnx,openvino]" \
 && rm -rf /tmp/src \
 && python -c "import kserve, onnxruntime, openvino, predictor, importlib.util as u; assert u.find_spec('torch') is None, 'torch in the CPU predictor image'"

RUN useradd --uid 1000 --user-group --no-create-home --home-dir /tmp --shell /usr/sbin/nologin app
USER 1000:1000
WORKDIR /tmp

# 8080 REST (pod-internal), 8081 V2 gRPC (the container port the manifests expose).
EXPOSE 8080 8081
ENTRYPOINT ["python", "-m", "predictor"]
