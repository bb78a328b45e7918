#!/bin/sh
# Make sure `promtool` (Prometheus' rule checker) is on PATH, for tests/test_alerts.py.
# Idempotent: does nothing when promtool is already installed. Otherwise installs Debian's `prometheus`
# package (the only Debian package that ships promtool; ~19 MB), which needs root and the Debian archive.
# Services are not started: images and CI runners deny it via policy-rc.d, and we never enable it.
set -eu
if command -v promtool >/dev/null 2>&1; then
    exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
    echo "ensure_promtool: promtool is missing and installing it needs root (apt-get install prometheus)" >&2
    exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends prometheus >/dev/null
command -v promtool >/dev/null 2>&1
