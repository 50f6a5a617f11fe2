#!/usr/bin/env bash
# Installs the Debian packages the embedded stack uses, only those that are missing; safe to run twice.
# Needs root (as on the CI and development machines); elsewhere it says what to install and stops.
set -euo pipefail
PACKAGES=(docker-registry skopeo umoci busybox-static nginx prometheus prometheus-alertmanager
          prometheus-pushgateway redis-server chromium wrk)
missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
  echo "system packages: all ${#PACKAGES[@]} present"
  exit 0
fi
if [ "$(id -u)" != 0 ]; then
  echo "system packages missing: ${missing[*]}; run as root: apt-get update && apt-get install -y ${missing[*]}" >&2
  exit 1
fi
echo "system packages: installing ${missing[*]}"
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
# The Debian packages start their services on install; the embedded stack runs its own instances on
# 127.0.0.1 with its own ports, so stop the system-wide ones (ignore a missing init system).
for s in docker-registry nginx prometheus prometheus-alertmanager prometheus-pushgateway redis-server; do
  (service "$s" stop >/dev/null 2>&1 || true)
done
echo "system packages: done"
