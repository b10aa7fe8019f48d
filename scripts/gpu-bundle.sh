#!/usr/bin/env bash
# Packs what the GPU check needs into .gpu/bundle.tar.xz (git-ignored, under the 64 MB a
# device run carries): avflow and the decode tests linked statically against
# a small FFmpeg with NVDEC/NVENC/CUDA filters (scripts/build-ffmpeg-gpu.sh), and one
# test clip. The GPU machine has the NVIDIA driver but no FFmpeg or Go.
#
#   scripts/gpu-bundle.sh && <on the GPU machine> scripts/gpu-check.sh
set -euo pipefail
cd "$(dirname "$0")/.."
ff=${FFMPEG_GPU:-/tmp/ffmpeg-gpu}
scripts/build-ffmpeg-gpu.sh "$ff"
export PKG_CONFIG_LIBDIR=$ff/lib/pkgconfig GOCACHE=${GOCACHE_GPU:-/tmp/gocache-gpu}
rm -rf .gpu && mkdir -p .gpu/shared/media
go build -ldflags=-s -o .gpu/avflow ./cmd/avflow
go test -c -ldflags=-s -o .gpu/decode.test ./stages/decode
go test -c -ldflags=-s -o .gpu/filter.test ./stages/filter
go test -c -ldflags=-s -o .gpu/infer.test ./stages/infer
cp ../shared/media/car-detection.mp4 .gpu/shared/media/
mkdir -p .gpu/shared/media/facecam .gpu/shared/models .gpu/ort
cp ../shared/media/facecam/walk.mkv .gpu/shared/media/facecam/
cp -r ../shared/models/ultraface .gpu/shared/models/
cp third_party/onnxruntime/libonnxruntime.so.1 .gpu/ort/   # has the WebGPU execution provider built in
for b in .gpu/avflow .gpu/decode.test .gpu/filter.test .gpu/infer.test; do
  if ldd "$b" | grep -q libav; then echo "gpu-bundle: $b links a shared FFmpeg" >&2; exit 1; fi
done
# xz brings ~57 MB down to ~20 MB; gpu-check.sh unpacks it.
tar cJf .gpu.tar.xz .gpu && rm -rf .gpu && mkdir .gpu && mv .gpu.tar.xz .gpu/bundle.tar.xz
du -sh .gpu
