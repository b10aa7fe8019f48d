#!/usr/bin/env bash
# The GPU check, run on a GPU machine from the repository root after
# scripts/gpu-bundle.sh: what the machine reports, what avflow discovers,
# NVDEC decode through avflow against CPU decode (frame count, PSNR above
# 40 dB; twice in one process), NVDEC frames scaled in place by scale_cuda,
# the same decode through `avflow run`, and whether NVENC opens (taking the
# decoder's CUDA frames as they are); ONNX Runtime's WebGPU provider (Dawn
# over Vulkan) against the CPU, with the Vulkan loaders the device README
# says to carry in .gl/ (unpacked when there).
# Writes its log to ${OUT:-.gpu/out}/gpu-check.log.
set -uo pipefail
[ -f .gpu/bundle.tar.xz ] && tar xJf .gpu/bundle.tar.xz
out=${OUT:-.gpu/out}
mkdir -p "$out"
exec > >(tee "$out/gpu-check.log") 2>&1
step() { echo; echo "=== $*"; }
step machine
nvidia-smi -L; nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
ls -l /dev/nvidia* 2>&1 | head; ls /proc/driver/nvidia/gpus 2>&1
step avflow devices
.gpu/avflow devices
step NVDEC decode vs CPU decode
AVFLOW_SHARED=.gpu/shared .gpu/decode.test -test.v -test.run 'TestGPUDecode' -test.count=1
step "GPU frames into a CUDA filter stage (scale_cuda) vs CPU scale"
AVFLOW_SHARED=$PWD/.gpu/shared .gpu/filter.test -test.v -test.run 'TestCUDAFilter' -test.count=1
step avflow run, decode on the GPU
cat > /tmp/gpu-decode.yaml <<YAML
name: gpu-decode
stages:
  - {name: src, kind: source, params: {url: $PWD/.gpu/shared/media/car-detection.mp4}}
  - {name: dec, kind: decode, inputs: [src.video], accelerator: gpu, strict: true}
  - {name: enc, kind: encode, inputs: [dec], params: {codec: rawvideo}}
  - {name: out, kind: sink, inputs: [enc], params: {path: /tmp/gpu-decode.yuv, format: rawvideo}}
YAML
.gpu/avflow --log-format text run /tmp/gpu-decode.yaml; echo "exit $?"
sed -e 's/accelerator: gpu/accelerator: cpu/' -e 's/gpu-decode.yuv/cpu-decode.yuv/' /tmp/gpu-decode.yaml > /tmp/cpu-decode.yaml
.gpu/avflow --log-level warn run /tmp/cpu-decode.yaml 2>/dev/null; echo "cpu exit $?"
echo "frames: GPU $(( $(stat -c %s /tmp/gpu-decode.yuv) / (768*432*3/2) )), CPU $(( $(stat -c %s /tmp/cpu-decode.yuv) / (768*432*3/2) ))"
cmp /tmp/gpu-decode.yuv /tmp/cpu-decode.yuv && echo "GPU and CPU outputs are byte-identical"
step NVENC: does FFmpeg open h264_nvenc on this GPU?
sed -e 's/inputs: \[dec\], params: {codec: rawvideo}/inputs: [dec], accelerator: gpu, params: {codec: h264_nvenc}/' -e 's/strict: true}/strict: true, params: {hw_format: device}}/' -e 's|/tmp/gpu-decode.yuv, format: rawvideo|"null"|' /tmp/gpu-decode.yaml > /tmp/gpu-nvenc.yaml
.gpu/avflow --log-format text run /tmp/gpu-nvenc.yaml; echo "exit $?"
step calibrate: each stage on each usable device kind
sed -e 's/, accelerator: gpu, strict: true//' -e 's|/tmp/gpu-decode.yuv, format: rawvideo|"null"|' /tmp/gpu-decode.yaml > /tmp/gpu-cal.yaml
timeout 120 .gpu/avflow --log-format text --log-level warn calibrate --frames 1000 -o "$out/profile.yaml" /tmp/gpu-cal.yaml; echo "exit $?"
step plan from the measured profile: 8 streams at 30 fps, cheapest
.gpu/avflow plan --profile "$out/profile.yaml" --streams 8 --fps 30 --objective cost /tmp/gpu-cal.yaml; echo "exit $?"
step frames left on the GPU by the decoder, copied off by the encoder or by NATS
for tr in local nats; do
  sed -e 's/strict: true}/strict: true, params: {hw_format: device}}/' -e "s/gpu-decode.yuv/dev-$tr.yuv/" /tmp/gpu-decode.yaml > /tmp/dev-$tr.yaml
  .gpu/avflow --log-level warn run --transport $tr /tmp/dev-$tr.yaml; echo "$tr exit $?"
  cmp /tmp/dev-$tr.yuv /tmp/cpu-decode.yuv && echo "$tr: device frames give output byte-identical to CPU decode"
done
step 8 streams decoded at once: GPU vs CPU, aggregate fps
for run in gpu:planar gpu:native cpu:planar; do
  accel=${run%%:*} fmt=${run##*:}
  { echo "name: multi-$accel"; echo "stages:"
    for i in 0 1 2 3 4 5 6 7; do
      echo "  - {name: src$i, kind: source, params: {url: $PWD/.gpu/shared/media/car-detection.mp4, loop: true, max_frames: 1500}}"
      echo "  - {name: dec$i, kind: decode, inputs: [src$i.video], accelerator: $accel, strict: true, params: {threads: 2, hw_format: $fmt}}"
      echo "  - {name: enc$i, kind: encode, inputs: [dec$i], params: {codec: rawvideo}}"
      echo "  - {name: out$i, kind: sink, inputs: [enc$i], params: {path: \"null\"}}"
    done; } > /tmp/multi-$accel.yaml
  s=$(date +%s.%N)
  .gpu/avflow --log-level error run --transport local /tmp/multi-$accel.yaml > /dev/null 2>&1; rc=$?
  e=$(date +%s.%N)
  awk -v a="$run" -v rc=$rc -v s="$s" -v e="$e" 'BEGIN { printf "%s: exit %d, 8 x 1500 frames in %.2f s = %.0f fps in all\n", a, rc, e-s, 12000/(e-s) }'
done
step "WebGPU execution provider (Dawn over Vulkan) vs the CPU"
if [ -d .gl ]; then for f in .gl/*.deb; do dpkg -x "$f" /; done; ldconfig; fi
[ -f /usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json ] && export VK_DRIVER_FILES=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
ldconfig -p | grep libvulkan || echo "no libvulkan: carry the loaders (.gl, see the device README)"
AVFLOW_ORT_LIB=$PWD/.gpu/ort/libonnxruntime.so.1 .gpu/avflow devices | grep -i webgpu
AVFLOW_ORT_LIB=$PWD/.gpu/ort/libonnxruntime.so.1 AVFLOW_MEDIA=$PWD/.gpu/shared/media AVFLOW_MODEL_MIRROR=$PWD/.gpu/shared/models .gpu/infer.test -test.v -test.run 'TestWebGPUMatchesCPU' -test.count=1
