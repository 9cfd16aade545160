#!/usr/bin/env bash
# Downloads the wheels in lab/device/requirements.txt for the accelerator image (CPython 3.12, x86-64 Linux) into
# lab/device/wheels (git-ignored; carry it to the device). Needs network and uv.
set -euo pipefail
cd "$(dirname "$0")"
uvx pip download --quiet --only-binary=:all: --no-deps --python-version 3.12 --platform manylinux_2_28_x86_64 \
  -d wheels -r requirements.txt
ls -l wheels
