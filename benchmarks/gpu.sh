#!/usr/bin/env bash
# The GPU benchmark in one command (benchmarks/gpu.ts): first every subgroup-matrix (tensor-core) kernel against
# its CPU reference (a table; WRONG rows make the script exit 1 after the rest has run), then the kernel table vs
# tfjs-backend-webgpu, SD 1.5's UNet step at batch 2 on a 64×64 latent in f32 and f16 with random weights (peers:
# PyTorch CUDA float32, and float16 with scaled_dot_product_attention), and 50 DDIM steps at 512² from prompt to
# pixels with peak GPU memory; rows carry the device name and merge into benchmarks/results-gpu.json. Meant to
# finish within 8 minutes on an H100-class GPU; `--quick` checks it on any adapter (lavapipe: the matrix kernels
# emulated, small models).
#
#   bash benchmarks/gpu.sh [--quick] [--only check,kernels,unet,e2e,tiles] [--repeats N] [--latent S] [--out file] [--no-peer]
#
# The GPU machine is assumed to have a `python3` with CUDA PyTorch ≥ 2.0 and PyYAML (the lent machines' image
# has torch 2.11); without it the UNet rows say why they have no peer.
#
# Runs from a checkout with node_modules (pnpm install) through tsx. A machine without node_modules (a GPU
# machine lent with no network) runs a bundle instead, made here beforehand by
#
#   bash benchmarks/gpu.sh --pack
#
# which writes benchmarks/gpu-bundle/ (git-ignored, ~40 MB): gpu.mjs (the benchmark, tfjs and our packages in one
# file), node_modules/webgpu (Dawn's Node binding, linux-x64 only, dawn.node xz-compressed: @ldm/tensor imports it
# at run time) and this machine's node binary (xz-compressed), for machines without Node 20. Take that folder
# along (e.g. the device tool's `carry`).
# Where Vulkan's loader is missing, Debian packages of it in .gl/*.deb (see the device notes) are unpacked first.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bundle="$root/benchmarks/gpu-bundle"

if [[ "${1:-}" == "--pack" ]]; then
  webgpu="$(readlink -f "$root/packages/tensor/node_modules/webgpu")"
  dawn_dir="$bundle/node_modules/webgpu/dist/linux-x64"
  rm -rf "$bundle" && mkdir -p "$dawn_dir"
  cp "$webgpu/package.json" "$webgpu/index.js" "$bundle/node_modules/webgpu/"
  # Static imports of every kernels-*.ts, which a bundle cannot find at run time, then the benchmark itself.
  entry="$root/benchmarks/gpu-bundle-entry.ts"
  trap 'rm -f "$entry"' EXIT
  { for f in "$root"/benchmarks/kernels-*.ts; do echo "import \"./$(basename "$f")\";"; done; echo 'import "./gpu.ts";'; } >"$entry"
  "$root/node_modules/.bin/esbuild" "$entry" --bundle --platform=node --format=esm --target=node20 \
    --outfile="$bundle/gpu.mjs" --log-level=warning \
    --banner:js='import { createRequire as __createRequire } from "node:module"; const require = __createRequire(import.meta.url);'
  xz -T0 -6 -c "$webgpu/dist/linux-x64/dawn.node" >"$dawn_dir/dawn.node.xz"
  xz -T0 -6 -c "$(command -v node)" >"$bundle/node.xz"
  du -sh "$bundle"
  exit 0
fi

# Vulkan's loader and glvnd (NVIDIA's Vulkan driver is libGLX_nvidia, which needs libGLdispatch), where the
# machine lacks them and the packages came along.
missing_libs() { for lib in libvulkan.so.1 libGLdispatch.so.0; do ldconfig -p 2>/dev/null | grep -q "$lib" || return 0; done; return 1; }
if missing_libs && compgen -G "$root/.gl/*.deb" >/dev/null; then
  for f in "$root"/.gl/*.deb; do dpkg -x "$f" /; done
  ldconfig
fi
nvidia_icd=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
if [[ -z "${VK_DRIVER_FILES:-}" && -f "$nvidia_icd" ]]; then export VK_DRIVER_FILES="$nvidia_icd"; fi

# gpu.ts finds reference/ (its PyTorch peer) from here, also when it runs bundled.
export LDM_REPO_ROOT="$root"
# Relative paths in the arguments (--out) are the caller's.
export INIT_CWD="${INIT_CWD:-$PWD}"
if [[ -e "$root/benchmarks/node_modules/.bin/tsx" ]]; then
  cd "$root/benchmarks"
  exec node --import tsx gpu.ts "$@"
fi
if [[ ! -f "$bundle/gpu.mjs" ]]; then
  echo "no node_modules and no $bundle/gpu.mjs: run 'pnpm install', or 'bash benchmarks/gpu.sh --pack' where it is installed" >&2
  exit 1
fi
dawn="$bundle/node_modules/webgpu/dist/linux-x64/dawn.node"
[[ -f "$dawn" ]] || xz -d -k "$dawn.xz"
node_bin="$(command -v node || true)"
if [[ -z "$node_bin" || "$("$node_bin" -p 'process.versions.node.split(".")[0]')" -lt 20 ]]; then
  node_bin=/tmp/ldm-node
  [[ -x "$node_bin" ]] || { xz -d -c "$bundle/node.xz" >"$node_bin" && chmod +x "$node_bin"; }
fi
# The bundle sits in gpu-bundle/: the results go to benchmarks/ all the same (a later --out wins).
exec "$node_bin" "$bundle/gpu.mjs" --out "$root/benchmarks/results-gpu.json" "$@"
