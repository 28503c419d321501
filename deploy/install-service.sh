#!/bin/sh
# Install the scoring service, and nothing else, into a fresh virtual environment.
#
#   deploy/install-service.sh VENV_DIR PROJECT_DIR      (PYTHON=python3.11 to pick the interpreter)
#
# The Docker image's builder stage runs exactly this script, and so does
# tests/deploy/test_image_recipe.py, so the image's install recipe is exercised on machines
# without a Docker engine. It installs the project's *base* dependencies only (`pip install
# PROJECT_DIR`, no extras): onnxruntime, tokenizers, fastapi, uvicorn, pydantic, prometheus-client,
# numpy, httpx, typer. The reward-model trainer (torch, transformers) lives in the `train` extra
# and must never reach the image, so the script fails if torch became importable.
set -eu

if [ "$#" -ne 2 ]; then
    echo "usage: $0 VENV_DIR PROJECT_DIR" >&2
    exit 2
fi
venv_dir=$1
project_dir=$2

"${PYTHON:-python}" -m venv "$venv_dir"
# pip byte-compiles while installing: the container runs with a read-only root filesystem, so
# no .pyc could be written at run time and every start would compile in memory instead.
"$venv_dir/bin/python" -m pip install --disable-pip-version-check --quiet "$project_dir"

if "$venv_dir/bin/python" -c "import importlib.util, sys; sys.exit(importlib.util.find_spec('torch') is None)"; then
    echo "torch is importable in $venv_dir: a base dependency now pulls it in; the service image must stay torch-free" >&2
    exit 1
fi
# from / so that the installed package is imported, not a source tree in the working directory
(cd / && "$venv_dir/bin/python" -c "import onnxruntime, service.bundle, service.encoding")
echo "service installed into $venv_dir (torch-free)"
