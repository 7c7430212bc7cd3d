#!/bin/sh
# Installs the Debian packages retune needs to build, run and test.
set -eu
SUDO=""
[ "$(id -u)" = 0 ] || SUDO=sudo
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -q
$SUDO apt-get install -y -q --no-install-recommends \
    build-essential make pkg-config ca-certificates curl python3 \
    libmicrohttpd-dev libcjson-dev libsqlite3-dev sqlite3 libopenblas-dev libpcre2-dev libutf8proc-dev jq \
    libopenmpi-dev openmpi-bin \
    postgresql libpq-dev \
    python3-torch python3-jinja2 \
    chromium
