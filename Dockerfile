# csmoe-megatron on the NGC PyTorch image, which brings CUDA, NCCL, NVIDIA Apex,
# Transformer Engine and its own torch build: none of them is installed again here.
#
#   docker build --build-arg GIT_COMMIT="$(git rev-parse HEAD)" -t csmoe-megatron:0.1.0 .
#   launch/docker_run.sh configs/cpu_tiny.yaml          # runs launch/torchrun.sh inside
ARG BASE_IMAGE=nvcr.io/nvidia/pytorch:25.11-py3
FROM ${BASE_IMAGE}

ARG CSMOE_VERSION=0.1.0
ARG GIT_COMMIT=unknown
LABEL org.opencontainers.image.title="csmoe-megatron" \
      org.opencontainers.image.description="Expert-parallel MoE pretraining on megatron-core with CompeteSMoE routing" \
      org.opencontainers.image.version="${CSMOE_VERSION}" \
      org.opencontainers.image.revision="${GIT_COMMIT}"

# CSMOE_GIT_COMMIT lands in run_info.json: the image has no .git to ask.
ENV PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    CSMOE_GIT_COMMIT=${GIT_COMMIT} \
    CSMOE_CONTAINER_IMAGE=csmoe-megatron:${CSMOE_VERSION}

SHELL ["/bin/bash", "-o", "pipefail", "-c"]
WORKDIR /opt/csmoe

# Dependencies first (a cached layer): the pins from pyproject.toml that the image lacks, with
# the image's own torch pinned so pip fails rather than replace it. The image's pip constraint
# file is swapped for that one pin here, as megatron-core's install guide advises. Never the
# PyPI "apex": it is an unrelated package; NVIDIA Apex ships with the image.
RUN python -c "import torch; print(f'torch=={torch.__version__}')" > /tmp/keep-torch.txt \
    && PIP_CONSTRAINT=/tmp/keep-torch.txt pip install --no-cache-dir \
        megatron-core==0.16.1 sentencepiece==0.2.3 \
    && python -c "import torch, sys; sys.exit(f'torch=={torch.__version__}' != open('/tmp/keep-torch.txt').read().strip())"

# The package itself, without dependencies (all present above or in the image).
COPY pyproject.toml README.md* ./
COPY csmoe_megatron ./csmoe_megatron
COPY tokenizer ./tokenizer
COPY configs ./configs
COPY launch ./launch
RUN pip install --no-cache-dir --no-deps . \
    && python -c "import megatron.core, sentencepiece, tensorboard, yaml, psutil, csmoe_megatron" \
    && useradd --create-home --uid 10001 --shell /bin/bash csmoe \
    && install -d -m 1777 /opt/csmoe/runs

USER 10001
CMD ["csmoe-train", "--help"]
