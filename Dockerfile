# csmoe-megatron on the NGC PyTorch image, which brings CUDA, NCCL, NVIDIA Apex,
# Transformer Engine and its own torch build: none of them is installed again here.
#
#   docker build --build-arg GIT_COMMIT="$(git rev-parse HEAD)" -t csmoe-megatron:0.1.0 .
#   launch/docker_run.sh configs/cpu_tiny.yaml          # runs launch/torchrun.sh inside
ARG BASE_IMAGE=nvcr.io/nvidia/pytorch:25.11-py3
FROM ${BASE_IMAGE}

ARG CSMOE_VERSION=0.1.0
# The image has no .git: the commit comes only from this argument (empty: run_info.json says null).
ARG GIT_COMMIT=
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

# Dependencies first (a cached layer): the ones the image lacks, at the versions CI tests
# (constraints.txt). What the image has stays as it is: its torch is pinned so pip fails rather
# than replace it (the image's pip constraint file is swapped for that one pin here, as
# megatron-core's install guide advises), and constraints.txt's pins of packages the image
# already has (numpy, PyYAML, ...) are dropped. Never the PyPI "apex": it is an unrelated
# package; NVIDIA Apex ships with the image.
COPY constraints.txt ./
RUN python -c "import torch; print(f'torch=={torch.__version__}')" > /tmp/keep-torch.txt \
    && pip list --format=freeze | sed -E 's/==.*//' | tr '_.' '--' | sed -E 's/.*/^&==/' > /tmp/image-has.txt \
    && grep -v -i -f /tmp/image-has.txt constraints.txt > /tmp/constraints.txt \
    && PIP_CONSTRAINT=/tmp/keep-torch.txt pip install --no-cache-dir -c /tmp/constraints.txt \
        megatron-core sentencepiece \
    && python -c "import torch, sys; sys.exit(f'torch=={torch.__version__}' != open('/tmp/keep-torch.txt').read().strip())"

# The package itself (configs included). Its requirements are ranges: whatever the image still
# lacks or has outside them is installed under the same constraints.
COPY pyproject.toml README.md* ./
COPY csmoe_megatron ./csmoe_megatron
COPY tokenizer ./tokenizer
COPY configs ./configs
COPY launch ./launch
RUN PIP_CONSTRAINT=/tmp/keep-torch.txt pip install --no-cache-dir -c /tmp/constraints.txt . \
    && python -c "import megatron.core, sentencepiece, tensorboard, yaml, psutil, csmoe_megatron, csmoe_tokenizer" \
    && useradd --create-home --uid 10001 --shell /bin/bash csmoe \
    && install -d -m 1777 /opt/csmoe/runs

USER 10001
CMD ["csmoe-train", "--help"]
