#!/usr/bin/env bash
# Installs what a fresh Debian bookworm machine (Node 20, root) lacks to run ldm.ts:
# a Vulkan driver that gives Dawn an adapter (Mesa >= 25 lavapipe from bookworm-backports;
# bookworm's own Mesa 22 gives none), pnpm, and the emoji dataset the built-in model's quality test scores
# against (built from Debian packages by reference/data/make_emoji_dataset.py; not in git). Idempotent and quiet.
# Opt-in: `--bench-peers` (`pnpm setup:bench`) also installs what the benchmarks' PyTorch peers import
# (reference/bench_torch.py, reference/bench_builtin.py, reference/full_size.py): Debian's python3-torch 1.13 (CPU)
# and the modules beside it. Tests never need them.
set -euo pipefail

BENCH_PEERS=0
for arg in "$@"; do
  case "$arg" in
    --bench-peers) BENCH_PEERS=1 ;;
    *) echo "setup-system.sh: unknown option '$arg' (the only one is --bench-peers)" >&2; exit 2 ;;
  esac
done

log() { echo "[setup] $*"; }

# All the named packages installed (dpkg-query -W alone also succeeds for removed ones).
installed() {
  for package in "$@"; do
    dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" || return 1
  done
}

have_backports_mesa() {
  dpkg-query -W -f='${Version}' mesa-vulkan-drivers 2>/dev/null | grep -q '^25\|^2[6-9]\|bpo'
}

if [ "$(uname -s)" = "Linux" ] && command -v apt-get >/dev/null 2>&1; then
  if ! have_backports_mesa || ! dpkg-query -W libvulkan1 >/dev/null 2>&1; then
    SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
    if ! grep -rqs 'bookworm-backports' /etc/apt/sources.list /etc/apt/sources.list.d/; then
      log "adding bookworm-backports (Mesa 25 lavapipe)"
      echo "deb http://deb.debian.org/debian bookworm-backports main" | $SUDO tee /etc/apt/sources.list.d/bookworm-backports.list >/dev/null
    fi
    log "apt-get update"
    $SUDO apt-get update -qq >/dev/null
    log "installing mesa-vulkan-drivers libvulkan1 from bookworm-backports"
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq -t bookworm-backports mesa-vulkan-drivers libvulkan1 >/dev/null
  fi
fi

EMOJI_PACKAGES="fonts-noto-color-emoji python3-fonttools unicode-data unicode-cldr-core python3-numpy python3-pil"
if [ "$(uname -s)" = "Linux" ] && command -v apt-get >/dev/null 2>&1; then
  # shellcheck disable=SC2086
  if ! installed $EMOJI_PACKAGES; then
    SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
    log "installing $EMOJI_PACKAGES (the emoji dataset)"
    $SUDO apt-get update -qq >/dev/null
    # shellcheck disable=SC2086
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq $EMOJI_PACKAGES >/dev/null
  fi
fi
REPO="$(cd "$(dirname "$0")/.." && pwd)"
if [ ! -f "$REPO/reference/out/emoji/emoji-64.npy" ] && [ -x /usr/bin/python3 ]; then
  log "building the emoji dataset (reference/out/emoji)"
  /usr/bin/python3 "$REPO/reference/data/make_emoji_dataset.py" >/dev/null
fi

if ! command -v pnpm >/dev/null 2>&1; then
  log "installing pnpm 10"
  npm install -g --silent pnpm@10 >/dev/null
fi

# Debian's Chromium for the browser end-to-end test (apps/web, `pnpm test:e2e`): headless, it offers WebGPU on
# SwiftShader with --enable-unsafe-webgpu.
if [ "$(uname -s)" = "Linux" ] && command -v apt-get >/dev/null 2>&1 && ! command -v chromium >/dev/null 2>&1; then
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
  log "installing chromium (browser end-to-end test)"
  $SUDO apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium >/dev/null
fi

# The benchmarks' PyTorch peers (opt-in, see the top): `pnpm bench`, `pnpm bench:e2e`, `pnpm bench:builtin`.
BENCH_PEER_PACKAGES="python3-torch python3-regex python3-yaml python3-numpy python3-pil"
if [ "$BENCH_PEERS" = 1 ] && [ "$(uname -s)" = "Linux" ] && command -v apt-get >/dev/null 2>&1; then
  # shellcheck disable=SC2086
  if ! installed $BENCH_PEER_PACKAGES; then
    SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
    log "installing $BENCH_PEER_PACKAGES (the benchmarks' PyTorch peers)"
    $SUDO apt-get update -qq >/dev/null
    # shellcheck disable=SC2086
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq $BENCH_PEER_PACKAGES >/dev/null
  fi
fi
