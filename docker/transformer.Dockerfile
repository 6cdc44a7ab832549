# syntax=docker/dockerfile:1
# Transformer image: image decoding, preprocessing and top-k in front of the
# predictor. No torch, no CUDA: it imports only kserve, numpy, pillow and the
# shared `common` package. Built from the repository root:
#   docker build -f docker/transformer.Dockerfile -t ghcr.io/example/image-classifier-transformer:0.1.0 .
# labels.txt and preprocess.json come from the model repository that KServe's
# storage initializer mounts at /mnt/models; nothing model-specific is baked in.
#
# Any base with Python 3.11 and its venv module builds it: the default, or a
# plain Debian bookworm made with debootstrap (`make image-test` does that:
# BASE_IMAGE=localhost/image-classifier-base:bookworm). Everything is installed
# into a venv at /opt/venv, so no base's own pip (or lack of one) matters.
ARG BASE_IMAGE=python:3.11.13-slim-bookworm
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
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin

COPY pyproject.toml README.md /tmp/src/
COPY common /tmp/src/common
COPY vision /tmp/src/vision
COPY groundtruth /tmp/src/groundtruth
COPY transformer /tmp/src/transformer

# The serving dependencies and the prediction log's (SQLAlchemy, psycopg), no
# `predictor` extra; the checks fail the build if anything pulled torch in
# anyway, or the demo page's files (package data) are missing.
RUN [ -n "${PIP_CERT:-}" ] || unset PIP_CERT; \
    python3 -m venv /opt/venv \
 && pip install --no-cache-dir "/tmp/src[serve,groundtruth]" \
 && rm -rf /tmp/src \
 && python -c "import kserve, transformer, importlib.util as u; assert u.find_spec('torch') is None, 'torch in the transformer image'" \
 && python -c "from transformer import demo; demo.load('check', '1', 5, 1000)"

# Numeric uid/gid so the kubelet can verify runAsNonRoot.
RUN useradd --uid 1000 --user-group --no-create-home --home-dir /tmp --shell /usr/sbin/nologin app
USER 1000:1000
WORKDIR /tmp

EXPOSE 8080
ENTRYPOINT ["python", "-m", "transformer"]
