# Hearth's image: web and worker share it. CPU llama.cpp by default; for NVIDIA GPUs build with
#   docker build --build-arg CMAKE_ARGS="-DGGML_CUDA=on" --build-arg BASE=nvidia/cuda:12.6.3-devel-ubuntu24.04 .
ARG BASE=python:3.11-slim-bookworm
FROM ${BASE}
ARG CMAKE_ARGS=""
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_DISABLE_PIP_VERSION_CHECK=1 CMAKE_ARGS=${CMAKE_ARGS}
RUN apt-get update && apt-get install -y --no-install-recommends build-essential cmake git \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /app
COPY pyproject.toml README.md ./
COPY config ./config
COPY inference ./inference
COPY api ./api
COPY webui ./webui
# PyTorch pinned first, so that nothing pulls a different build; MLX is left out of the Linux image.
# llama.cpp without its AMX kernels on x86-64 (they die with SIGILL on some VMs that list AMX; see the
# Makefile); a CMAKE_ARGS build argument is added after these flags.
RUN pip install --no-cache-dir torch==2.13.0 \
    && if [ "$(uname -m)" = x86_64 ]; then \
         NO_AMX='-mno-amx-tile\ -mno-amx-int8\ -mno-amx-bf16'; \
         export CMAKE_ARGS="-DCMAKE_C_FLAGS=$NO_AMX -DCMAKE_CXX_FLAGS=$NO_AMX $CMAKE_ARGS"; \
       fi \
    && pip install --no-cache-dir .
COPY manage.py ./
COPY templates ./templates
COPY static ./static
RUN useradd --create-home --uid 1000 hearth && mkdir -p /models /data && chown hearth /models /data
USER hearth
EXPOSE 8000
CMD ["python", "manage.py", "serve", "--host", "0.0.0.0", "--port", "8000"]
