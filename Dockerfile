# GPU image: CUDA runtime + the project, with faiss on the GPU, run as a non-root user.
#   docker build -t dsfnet .
#   docker run --gpus all -v $PWD:/app/project -w /app/project dsfnet       # the flow on a mounted project
# The default command runs the whole pipeline (the Prefect flow) on the project copied into the image.
FROM nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04

# DO_NOT_TRACK … GX_ANALYTICS_ENABLED: a copy of pipeline/__init__.py OFFLINE_ENV for every process in the
# container, dvc and mlflow included (tests/test_readme_commands.py checks that the two agree)
ENV DEBIAN_FRONTEND=noninteractive \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    DO_NOT_TRACK=1 \
    PREFECT_SERVER_ANALYTICS_ENABLED=false \
    PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS=90 \
    MLFLOW_DISABLE_TELEMETRY=true \
    DVC_NO_ANALYTICS=1 \
    GX_ANALYTICS_ENABLED=false \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH

# apt versions are whatever the pinned base image's release ships (see .hadolint.yaml)
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3.12 python3.12-venv git \
    && rm -rf /var/lib/apt/lists/* \
    && python3.12 -m venv /opt/venv \
    && useradd --create-home --uid 1000 --shell /bin/bash reid

WORKDIR /app
COPY pyproject.toml README.md ./
COPY dsfnet ./dsfnet
COPY pipeline ./pipeline
# faiss-gpu and faiss-cpu both provide `faiss`: install the project, then swap in the GPU build
RUN pip install 'pip==25.3' \
    && pip install './[onnx]' \
    && pip uninstall -y faiss-cpu \
    && pip install 'faiss-gpu==1.15.1'

COPY --chown=reid:reid . .
USER 1000
# DVC needs a repository; a container built from a plain copy gets its own
RUN git init -q && git add -A && git -c user.name=docker -c user.email=docker@localhost commit -qm image

CMD ["python", "-m", "pipeline.flows"]
