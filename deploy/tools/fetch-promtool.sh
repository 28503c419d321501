#!/bin/sh
# Print the path of a `promtool` binary (Prometheus' rule/config checker and rule unit-test runner),
# fetching it from Debian's `prometheus` package into a cache when none is installed. Nothing is
# installed system-wide: the .deb is only unpacked.
#
#   deploy/tools/fetch-promtool.sh [CACHE_DIR]     (default ${XDG_CACHE_HOME:-~/.cache}/rlhf-reward-stack)
#   "$(deploy/tools/fetch-promtool.sh)" test rules deploy/prometheus/alerts.test.yml
set -eu

if command -v promtool >/dev/null 2>&1; then
    command -v promtool
    exit 0
fi
cache=${1:-${XDG_CACHE_HOME:-$HOME/.cache}/rlhf-reward-stack}
binary=$cache/promtool
if [ -x "$binary" ]; then
    echo "$binary"
    exit 0
fi
if ! command -v apt-get >/dev/null 2>&1 || ! command -v dpkg-deb >/dev/null 2>&1; then
    echo "promtool is not installed and this is not a Debian-like system: install Prometheus' promtool" >&2
    exit 1
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cd "$work"
# the package lists may be missing on a fresh machine: refresh them once, then retry
if ! apt-get download prometheus >/dev/null 2>&1; then
    apt-get update -qq >/dev/null
    apt-get download prometheus >/dev/null 2>&1
fi
dpkg-deb -x prometheus_*.deb unpacked
mkdir -p "$cache"
cp unpacked/usr/bin/promtool "$binary.tmp"
mv "$binary.tmp" "$binary"
echo "$binary"
