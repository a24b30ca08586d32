#!/bin/bash
# A CUDA build of the llama.cpp that llama-cpp-python vendors, made on a machine WITHOUT a GPU, for the GPU
# benchmarks (docs/benchmarks.md, "On a GPU"): llama-cpp-python's Python package over shared libraries built with
# CUDA, and a llama-server linked to the same libraries, so both servers run the same kernels.
#
#   bench/cuda_build.sh OUT [ARCH]     ARCH: CMAKE_CUDA_ARCHITECTURES, default 90 (H100/H200)
#
# Needs nvcc 13 ($CUDA_HOME, default /usr/local/cuda-13.0), cmake, ninja, gcc, and pip (it downloads the sdist of
# the pinned llama-cpp-python and NVIDIA's cuBLAS wheel). What it does that a plain build cannot:
#   - cuBLAS comes from the `nvidia-cublas` wheel, copied into a private copy of the toolkit;
#   - the driver library (libcuda.so.1) exists only where a GPU does: an empty stub with that soname is linked
#     instead, and executables are linked with --allow-shlib-undefined, so the real driver resolves the symbols
#     where the build runs;
#   - GGML_NATIVE is off (AVX2/FMA/F16C instead): the GPU machine's CPU is not this one.
# OUT gets: py/ (llama_cpp package + a dist-info), lib/ (the shared libraries), bin/llama-server with
# cmake-options.txt beside it. On the GPU machine: LD_LIBRARY_PATH=OUT/lib plus the CUDA runtime and cuBLAS 13
# libraries (e.g. PyTorch's), PYTHONPATH=OUT/py, HEARTH_LLAMA_SERVER=OUT/bin/llama-server (bench/cuda_run.sh).
# About 30 minutes on 2 cores for one architecture (27 on an idle 2-core machine, 2026-11-28).
set -euo pipefail
OUT=$(realpath -m "$1")
ARCH=${2:-90}
CUDA_HOME=${CUDA_HOME:-/usr/local/cuda-13.0}
VERSION=$(grep -o 'llama-cpp-python==[0-9.]*' "$(dirname "$0")/../pyproject.toml" | cut -d= -f3)
WORK=${WORK:-$OUT.work}
mkdir -p "$OUT" "$WORK"
cd "$WORK"

python3 -m pip download -q --no-binary :all: --no-deps "llama-cpp-python==$VERSION" -d sdist
tar xzf "sdist/llama_cpp_python-$VERSION.tar.gz"
SRC=$WORK/llama_cpp_python-$VERSION

python3 -m pip download -q --no-deps --only-binary=:all: --platform manylinux_2_27_x86_64 \
    --python-version 3.12 "nvidia-cublas>=13.0,<13.1" -d cublas
rm -rf cuda cublas/x && mkdir -p cublas/x && unzip -q cublas/nvidia_cublas-*.whl -d cublas/x
cp -a "$CUDA_HOME" cuda
cp cublas/x/nvidia/cu13/include/* cuda/include/
cp cublas/x/nvidia/cu13/lib/libcublas*.so.13 cuda/lib64/
ln -sf libcublas.so.13 cuda/lib64/libcublas.so
ln -sf libcublasLt.so.13 cuda/lib64/libcublasLt.so
mkdir -p cuda/lib64/stubs
echo "" > stub.c && gcc -shared -fPIC -Wl,-soname,libcuda.so.1 -o cuda/lib64/stubs/libcuda.so stub.c

OPTIONS=(-G Ninja -DCMAKE_BUILD_TYPE=Release -DBUILD_SHARED_LIBS=ON -DGGML_CUDA=ON "-DCMAKE_CUDA_ARCHITECTURES=$ARCH"
         -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON
         -DLLAMA_BUILD_SERVER=ON -DLLAMA_BUILD_TOOLS=ON -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF
         -DLLAMA_USE_PREBUILT_UI=OFF -DLLAMA_BUILD_UI=OFF -DLLAMA_CURL=OFF
         "-DCUDAToolkit_ROOT=$WORK/cuda" -DCMAKE_EXE_LINKER_FLAGS=-Wl,--allow-shlib-undefined)
PATH=$WORK/cuda/bin:$PATH cmake -S "$SRC/vendor/llama.cpp" -B build "${OPTIONS[@]}"
PATH=$WORK/cuda/bin:$PATH cmake --build build --target ggml-cuda -j "$(nproc)"
# The stub must define the driver functions ggml-cuda calls, or the linker drops it (--as-needed) and nothing
# loads the real libcuda.so.1 where the libraries run: made from what ggml-cuda left undefined, then relinked.
nm -D --undefined-only build/bin/libggml-cuda.so | awk '$2 ~ /^cu[A-Z]/ {print "void " $2 "(void) {}"}' > stub.c
gcc -shared -fPIC -Wl,-soname,libcuda.so.1 -o cuda/lib64/stubs/libcuda.so stub.c
PATH=$WORK/cuda/bin:$PATH cmake --build build --target llama mtmd llama-server -j "$(nproc)"
readelf -d build/bin/libggml-cuda.so | grep -q 'libcuda.so.1' || { echo "libggml-cuda does not load libcuda.so.1"; exit 1; }

rm -rf "$OUT/py" "$OUT/lib" "$OUT/bin" && mkdir -p "$OUT/py" "$OUT/lib" "$OUT/bin"
cp -r "$SRC/llama_cpp" "$OUT/py/" && rm -rf "$OUT/py/llama_cpp/lib"
INFO=$OUT/py/llama_cpp_python-$VERSION.dist-info
mkdir -p "$INFO" && touch "$INFO/RECORD" && echo "hearth-cuda-build" > "$INFO/INSTALLER"
printf 'Metadata-Version: 2.1\nName: llama_cpp_python\nVersion: %s\nSummary: over a CUDA build (arch %s)\n' \
    "$VERSION" "$ARCH" > "$INFO/METADATA"
cp -a build/bin/*.so* "$OUT/lib/"
strip --strip-unneeded "$OUT"/lib/*.so* 2>/dev/null || true
cp build/bin/llama-server "$OUT/bin/" && strip "$OUT/bin/llama-server"
printf '%s\n' "${OPTIONS[@]}" > "$OUT/bin/cmake-options.txt"
du -sh "$OUT"/*
