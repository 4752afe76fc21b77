#!/usr/bin/env bash
# Creates or updates the separate virtual environment for MONAI Label 0.8.5 (default: .venv-monailabel).
#
# MONAI Label imports torchvision, which fails beside the project's torch 2.13.0 CPU; it also needs
# numpy<2 and jsonschema<4 (through pydicom-seg). So it lives in its own venv with torch 2.14.1 and
# torchvision 0.29.1 (the PyPI CUDA build: 8.2 GB, about 4 minutes). This project's `common` is installed
# there editable, with its dependencies except jsonschema, which only `verify_metadata` uses.
# Idempotent: a second run with unchanged inputs returns at once.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${MONAILABEL_VENV:-$ROOT/.venv-monailabel}"
PYTHON="${PYTHON:-python3}"
PY="$VENV/bin/python"
STAMP="$VENV/.installed"
# pydicom<3: pydicom-seg 0.4.1 (imported by the MONAI Label server) needs pydicom._storage_sopclass_uids.
PINS=(torch==2.14.1 torchvision==0.29.1 monailabel==0.8.5 monai==1.6.1 "pydicom<3")
# The quick test only locates the packages; after an install, the server app and bundle task are imported.
# `common` is never imported here: a working tree in mid-edit must not fail the set-up.
FOUND='import importlib.util as u; assert all(map(u.find_spec, ["monailabel", "torchvision", "common"]))'
CHECK='from monailabel.interfaces.app import MONAILabelApp
from monailabel.tasks.infer.bundle import BundleInferTask'

inputs_hash() { cat "$ROOT/pyproject.toml" "${BASH_SOURCE[0]}" | sha256sum | cut -d' ' -f1; }

if [[ -f "$STAMP" && "$(cat "$STAMP")" == "$(inputs_hash)" ]] && "$PY" -c "$FOUND" 2>/dev/null; then
    echo "$VENV is up to date"
    exit 0
fi

[[ -x "$PY" ]] || "$PYTHON" -m venv "$VENV"
"$PY" -m pip install -q --upgrade pip setuptools wheel

# The project's requirements from pyproject.toml, less jsonschema (pydicom-seg needs <4) and the pins.
mapfile -t DEPS < <("$PY" - "$ROOT/pyproject.toml" <<'EOF'
import re, sys, tomllib
deps = tomllib.load(open(sys.argv[1], "rb"))["project"]["dependencies"]
skip = {"jsonschema", "torch", "monai"}
print("\n".join(d for d in deps if re.split(r"[<>=!~\[; ]", d, maxsplit=1)[0].lower() not in skip))
EOF
)

printf '%s\n' "${PINS[@]}" >"$VENV/constraints.txt"
"$PY" -m pip install -q -c "$VENV/constraints.txt" "${PINS[@]}" "${DEPS[@]}"
"$PY" -m pip install -q --no-deps -e "$ROOT"
"$PY" -c "$FOUND
$CHECK"
inputs_hash >"$STAMP"
echo "ready: $VENV ($(du -sh "$VENV" | cut -f1))"
