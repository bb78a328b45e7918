#!/bin/sh
# Make sure Debian's `chromium` is installed at /usr/bin/chromium, for tests/test_connect_js.py (Playwright
# drives it; Playwright's own browser download is never used).
# Idempotent: does nothing when chromium is already installed. Otherwise installs Debian's `chromium`
# package, which needs root and the Debian archive.
set -eu
if [ -x /usr/bin/chromium ]; then
    exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
    echo "ensure_chromium: /usr/bin/chromium is missing and installing it needs root (apt-get install chromium)" >&2
    exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends chromium fonts-liberation >/dev/null
/usr/bin/chromium --version >/dev/null
