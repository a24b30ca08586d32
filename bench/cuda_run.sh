#!/bin/bash
# The GPU benchmarks on a CUDA machine (docs/benchmarks.md, "On a GPU"), from the repository root:
#
#   bench/cuda_run.sh DIR      DIR: what bench/cuda_build.sh made (py/, lib/ (its files may be gzipped), bin/),
#                              the model as model.gguf (or model.gguf.gz, or in parts model.part.*), and whl/ with
#                              wheels of Hearth's dependencies that the machine's Python lacks (installed into
#                              /tmp/site); bench/cuda_stage.sh packs all of it for a machine that reaches nothing
#
# Results go to $OUT (default /tmp/out): setup.log, concurrency.log (+ gpu-concurrency.svg), llamacpp.log.
# STREAMS (default 1,2,4,8,16,32), TURNS (10), SLOTS (32), THREADS (8) and the timeouts CONCURRENCY_S (330) and
# LLAMACPP_S (120) may be set in the environment; REPEAT_STREAMS (e.g. 8,32) adds a pass of (a) alone with those
# counts, both servers up at once taking turns for REPEAT_ROUNDS (default 3) rounds (repeat.log, timeout REPEAT_S): the
# spread between rounds. SETUP_ONLY=1 stops after the set-up (setup.log), before the benches.
set -u
G=$(realpath "$1")
REPO=$PWD
OUT=${OUT:-/tmp/out}
SITE=/tmp/site
mkdir -p "$OUT"
CUDA_DIRS=$(find /opt /usr -xdev \( -name 'libcublas.so.13' -o -name 'libcublasLt.so.13' -o -name 'libcudart.so.13' \) \
            2>/dev/null | xargs -r -n1 dirname | sort -u | tr '\n' ':')
export LD_LIBRARY_PATH=$G/lib:${CUDA_DIRS}${LD_LIBRARY_PATH:-}
export PYTHONPATH=$SITE:$G/py:$REPO PYTHONUNBUFFERED=1
export LLAMA_CPP_LIB_PATH=$G/lib HEARTH_LLAMA_SERVER=$G/bin/llama-server HEARTH_BENCH_CACHE=/tmp/bench-cache
{
  echo "== machine"; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader; nproc
  python3 --version; date -u; echo "CUDA libraries from: $CUDA_DIRS"
  for packed in "$G"/lib/*.gz; do [ -e "$packed" ] && gunzip -f "$packed"; done  # carried gzipped (size limits)
  for versioned in "$G"/lib/*.so.0; do [ -e "${versioned%.0}" ] || ln -s "${versioned##*/}" "${versioned%.0}"; done
  [ -f "$G/model.gguf.gz" ] && gunzip -f "$G/model.gguf.gz"  # bench/cuda_stage.sh sends it gzipped
  if [ ! -f "$G/model.gguf" ] && [ -e "$(ls "$G"/model.part.* 2>/dev/null | head -1)" ]; then
    cat "$G"/model.part.* > "$G/model.gguf" && rm -f "$G"/model.part.*
  fi
  sha256sum "$G/model.gguf"
  if [ -d "$G/whl" ] && [ ! -d $SITE/django ]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target $SITE "$G"/whl/*.whl || exit 1
  fi
  chmod +x "$HEARTH_LLAMA_SERVER"
  ldd "$HEARTH_LLAMA_SERVER" | grep -i "not found\|cuda\|cublas"
  python3 -c "import llama_cpp; print('llama-cpp-python', llama_cpp.__version__, 'GPU offload:',
llama_cpp.llama_supports_gpu_offload()); print(llama_cpp.llama_print_system_info().decode())"
  DJANGO_SETTINGS_MODULE=config.settings python3 -c "import django; django.setup()
import ninja, channels, daphne, celery, gguf, huggingface_hub, inference.engine.llamacpp; print('Hearth imports: ok')"
} 2>&1 | tee "$OUT/setup.log"
[ -n "${SETUP_ONLY:-}" ] && exit 0  # the build and the wheels checked, no bench
timeout "${CONCURRENCY_S:-330}" python3 -m bench concurrency --model "$G/model.gguf" --gpu-layers 999 \
    --threads "${THREADS:-8}" --slots "${SLOTS:-32}" --streams "${STREAMS:-1,2,4,8,16,32}" --turns "${TURNS:-10}" \
    --plot "$OUT/gpu-concurrency.svg" 2>&1 | tee "$OUT/concurrency.log"
if [ -n "${REPEAT_STREAMS:-}" ]; then
  timeout "${REPEAT_S:-${CONCURRENCY_S:-330}}" python3 -m bench concurrency --model "$G/model.gguf" --gpu-layers 999 \
      --threads "${THREADS:-8}" --slots "${SLOTS:-32}" --streams "$REPEAT_STREAMS" --turns 0 \
      --rounds "${REPEAT_ROUNDS:-3}" 2>&1 | tee "$OUT/repeat.log"
fi
timeout "${LLAMACPP_S:-120}" python3 -m bench llamacpp --model "$G/model.gguf" --gpu-layers 999 \
    --threads "${THREADS:-8}" --rounds 5 2>&1 | tee "$OUT/llamacpp.log"
nvidia-smi > "$OUT/nvidia-smi.txt" 2>&1
