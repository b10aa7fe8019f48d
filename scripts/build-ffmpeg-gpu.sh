#!/usr/bin/env bash
# Builds a small static FFmpeg 5.1 (Debian 12's version, from Debian's
# source package) with NVIDIA decode/encode (NVDEC, CUVID, NVENC through
# nv-codec-headers, which load the driver's libraries at run time) and the
# CUDA filters (scale_cuda..., compiled to PTX by clang as Debian does, no
# CUDA toolkit needed), so that
# avflow and its tests can be linked into self-contained binaries for a GPU
# machine that has no FFmpeg (see scripts/gpu-check.sh). Not part of
# `make setup`: the normal build uses Debian's shared FFmpeg.
#
#   scripts/build-ffmpeg-gpu.sh /tmp/ffmpeg-gpu     # prefix to install into
set -euo pipefail
prefix=${1:?usage: build-ffmpeg-gpu.sh PREFIX}
[ -f "$prefix/lib/libavfilter.a" ] && grep -q scale_cuda "$prefix/lib/libavfilter.a" && exit 0
apt-get install -y -qq --no-install-recommends libffmpeg-nvenc-dev nasm dpkg-dev clang llvm >/dev/null
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
lists=$work/lists
mkdir -p "$lists/partial"
printf 'deb-src http://deb.debian.org/debian bookworm main\n' >"$work/src.list"
o="-oDir::Etc::SourceList=$work/src.list -oDir::Etc::SourceParts=/dev/null -oDir::State::Lists=$lists"
apt-get $o update -qq
(cd "$work" && apt-get $o source --download-only -qq ffmpeg && tar xf ffmpeg_*.orig.tar.xz)
cd "$work"/ffmpeg-*/
./configure --prefix="$prefix" --disable-shared --enable-static --enable-pic \
  --disable-programs --disable-doc --disable-autodetect --disable-everything \
  --enable-ffnvcodec --enable-nvdec --enable-cuvid --enable-nvenc --enable-cuda-llvm \
  --enable-hwaccel=h264_nvdec,hevc_nvdec,av1_nvdec,vp9_nvdec \
  --enable-decoder=h264,hevc,vp9,av1,aac,h264_cuvid,hevc_cuvid,rawvideo \
  --enable-encoder=h264_nvenc,hevc_nvenc,rawvideo,aac \
  --enable-parser=h264,hevc,vp9,av1,aac \
  --enable-demuxer=mov,matroska,h264,hevc,rawvideo \
  --enable-muxer=mp4,mov,matroska,rawvideo,null \
  --enable-bsf=h264_mp4toannexb,hevc_mp4toannexb,aac_adtstoasc \
  --enable-protocol=file,pipe \
  --enable-filter=buffer,buffersink,abuffer,abuffersink,format,aformat,scale,aresample,null,anull,hwdownload,hwupload,hwupload_cuda,scale_cuda,overlay_cuda,yadif_cuda,boxblur,crop,pad,fps,setpts,asetpts \
  --enable-swscale --enable-swresample --enable-avfilter --enable-avdevice
make -j"$(nproc)" >/dev/null
make install >/dev/null
# cgo asks pkg-config for --libs only; a static library needs its private
# dependencies on the same line.
for pc in "$prefix"/lib/pkgconfig/*.pc; do
  priv=$(sed -n 's/^Libs.private: *//p' "$pc")
  sed -i "s|^Libs: \(.*\)|Libs: \1 $priv|; /^Libs.private:/d; /^Requires.private:/d" "$pc"
done
echo "FFmpeg for GPU machines installed in $prefix"
