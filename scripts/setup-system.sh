#!/usr/bin/env bash
# Installs what a fresh Debian bookworm machine (Node 20, root) lacks to run ldm.ts:
# a Vulkan driver that gives Dawn an adapter (Mesa >= 25 lavapipe from bookworm-backports;
# bookworm's own Mesa 22 gives none), and pnpm. Idempotent and quiet.
set -euo pipefail

log() { echo "[setup] $*"; }

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

if ! command -v pnpm >/dev/null 2>&1; then
  log "installing pnpm 10"
  npm install -g --silent pnpm@10 >/dev/null
fi
