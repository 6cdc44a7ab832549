# syntax=docker/dockerfile:1
# Transformer image: image decoding, preprocessing and top-k in front of the
# predictor. No torch, no CUDA: it imports only kserve, numpy, pillow and the
# shared `common` package. Built from the repository root:
#   docker build -f docker/transformer.Dockerfile -t ghcr.io/example/image-classifier-transformer:0.1.0 .
# labels.txt and preprocess.json come from the model repository that KServe's
# storage initializer mounts at /mnt/models; nothing model-specific is baked in.

ARG BASE_IMAGE=python:3.11.13-slim-bookworm
FROM ${BASE_IMAGE}

# HOME and the caches point at /tmp: the root filesystem is read-only at run
# time and /tmp is the pod's emptyDir.
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HOME=/tmp \
    XDG_CACHE_HOME=/tmp/.cache

COPY pyproject.toml README.md /tmp/src/
COPY common /tmp/src/common
COPY vision /tmp/src/vision
COPY groundtruth /tmp/src/groundtruth
COPY transformer /tmp/src/transformer

# The serving dependencies and the prediction log's (SQLAlchemy, psycopg), no `predictor`
# extra; the checks fail the build if
# anything pulled torch in anyway, or the demo page's files (package data) are
# missing from the installed package.
RUN pip install --no-cache-dir "/tmp/src[serve,groundtruth]" \
 && rm -rf /tmp/src \
 && python -c "import kserve, transformer, importlib.util as u; assert u.find_spec('torch') is None, 'torch in the transformer image'" \
 && python -c "from transformer import demo; demo.load('check', '1', 5, 1000)"

# Numeric uid/gid so the kubelet can verify runAsNonRoot.
RUN useradd --uid 1000 --user-group --no-create-home --home-dir /tmp --shell /usr/sbin/nologin app
USER 1000:1000
WORKDIR /tmp

EXPOSE 8080
ENTRYPOINT ["python", "-m", "transformer"]
