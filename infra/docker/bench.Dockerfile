# leaflm-bench image: the Locust runner, the HF baselines (`transformers serve` and the naive
# FastAPI-around-generate server) and report writing. Built on top of the leaflm image so all
# peers share torch, transformers and the model files.
#
#   docker build -f infra/docker/bench.Dockerfile --build-arg LEAFLM_IMAGE=leaflm -t leaflm-bench .
ARG LEAFLM_IMAGE=leaflm
FROM ${LEAFLM_IMAGE}

COPY packages/clients packages/clients
COPY packages/bench packages/bench
RUN pip install --no-cache-dir ./packages/clients ./packages/bench "transformers[serving]"

ENTRYPOINT []
CMD ["leaflm", "bench", "--help"]
