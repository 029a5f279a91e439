# GPU image: CUDA runtime + the project, with faiss on the GPU. `docker run --gpus all <image>` runs the flow.
FROM nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04

ENV DEBIAN_FRONTEND=noninteractive \
    PIP_NO_CACHE_DIR=1 \
    DO_NOT_TRACK=1 \
    PREFECT_SERVER_ANALYTICS_ENABLED=false \
    PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS=90 \
    MLFLOW_DISABLE_TELEMETRY=true \
    DVC_NO_ANALYTICS=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH

RUN apt-get update \
    && apt-get install -y --no-install-recommends python3.12 python3.12-venv git \
    && rm -rf /var/lib/apt/lists/* \
    && python3.12 -m venv /opt/venv

WORKDIR /app
COPY pyproject.toml README.md ./
COPY dsfnet ./dsfnet
COPY pipeline ./pipeline
# faiss-gpu and faiss-cpu both provide `faiss`: install the project, then swap in the GPU build
RUN pip install --upgrade pip \
    && pip install . \
    && pip uninstall -y faiss-cpu \
    && pip install 'faiss-gpu==1.15.1'

COPY . .
# DVC needs a repository; a container built from a plain copy gets its own
RUN git init -q && git add -A && git -c user.name=docker -c user.email=docker@localhost commit -qm image || true

CMD ["python", "-m", "pipeline.flows"]
