#!/usr/bin/env bash
# Places ONNX Runtime's C library (the version onnxruntime_go v1.27.0 is
# written against) in third_party/onnxruntime/, taken from the npm package
# onnxruntime-node, which ships it prebuilt. Does nothing when it is there.
set -euo pipefail
version=1.24.1
dest=third_party/onnxruntime
lib=$dest/libonnxruntime.so.1
[ -f "$lib" ] && [ "$(cat "$dest/VERSION" 2>/dev/null)" = "$version" ] && exit 0
case "$(uname -m)" in
  x86_64) arch=x64 ;;
  aarch64) arch=arm64 ;;
  *) echo "setup: no prebuilt ONNX Runtime for $(uname -m)"; exit 1 ;;
esac
if ! command -v npm >/dev/null; then
  echo "setup: installing npm (Debian package) to fetch ONNX Runtime"
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO=sudo
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends npm >/dev/null
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
echo "setup: fetching onnxruntime-node@$version for libonnxruntime.so.1"
(cd "$tmp" && npm pack --silent "onnxruntime-node@$version" >/dev/null)
mkdir -p "$dest"
tar -xzf "$tmp"/onnxruntime-node-$version.tgz -C "$tmp" "package/bin/napi-v6/linux/$arch/libonnxruntime.so.1"
mv "$tmp/package/bin/napi-v6/linux/$arch/libonnxruntime.so.1" "$lib"
echo "$version" > "$dest/VERSION"
