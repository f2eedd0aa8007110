#!/usr/bin/env bash
# One virtual environment per peer server for bench/peers_bench.py:
#
#     bash scripts/peers-setup.sh                  # all three: mlserver bentoml ray
#     bash scripts/peers-setup.sh mlserver ray     # some of them
#
# Each peer goes into .venv-peers/NAME (gitignored), created with this machine's python3,
# never into clipperlab's own environment: MLServer, BentoML and Ray Serve pin fastapi,
# pydantic, protobuf, ... in ways that need not agree with ours or with each other.  The
# pinned versions are the `peers` extra in pyproject.toml (the one place they are written).
# torch is held at the CPU build on this machine's disk (2.13.0): no peer needs torch, and
# none may pull a CUDA build in.  Re-running replaces nothing that is already installed at
# the pinned version.  Needs PyPI (pip install by name); about 1-3 minutes per peer.
set -euo pipefail
cd "$(dirname "$0")/.."

peers=("$@")
if [ ${#peers[@]} -eq 0 ]; then
  peers=(mlserver bentoml ray)
fi

# The pinned requirement of one peer, from pyproject.toml's `peers` extra.
pin() {
  python3 - "$1" <<'PY'
import re, sys, tomllib
reqs = tomllib.load(open("pyproject.toml", "rb"))["project"]["optional-dependencies"]["peers"]
name = sys.argv[1]
hits = [r for r in reqs if re.split(r"[\[<>=!~ ]", r, maxsplit=1)[0].lower() == name]
if len(hits) != 1:
    sys.exit(f"peers-setup: {name!r} is not in pyproject.toml's peers extra {reqs}")
print(hits[0])
PY
}

# What a peer's own pins leave open but its code does not survive.
# - mlserver 1.7.1: its inference worker calls asyncio.get_event_loop() with no loop running,
#   which uvloop 0.22 and later refuse ("There is no current event loop"); 0.21 still works.
declare -A HOLD=([mlserver]="uvloop<0.22")

constraints=$(mktemp)
trap 'rm -f "$constraints"' EXIT
echo "torch==2.13.0" > "$constraints"

for peer in "${peers[@]}"; do
  req=$(pin "$peer")
  venv=".venv-peers/$peer"
  echo "== $peer: $req into $venv"
  [ -x "$venv/bin/python" ] || python3 -m venv "$venv"
  # the hold is a requirement (not a constraint): it also moves an existing venv back
  # shellcheck disable=SC2086
  "$venv/bin/python" -m pip install -q --disable-pip-version-check -c "$constraints" \
    "$req" ${HOLD[$peer]:-}
  "$venv/bin/python" -c "import importlib.metadata as m; print('   $peer', m.version('$peer'), 'ready')"
done
