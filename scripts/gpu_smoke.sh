#!/usr/bin/env bash
# GPU smoke test for a machine with one NVIDIA GPU (under 8 minutes, installs nothing).
#
#   bash scripts/gpu_smoke.sh [--out DIR] [--skip-4b] [--timeout SECONDS]
#
# Phases (each a `python -m layer_sensitivity ... tracking=none` job run by scripts/measure_job.py
# at the planned batch 4 x 128 tokens with fixed padding, timed per phase; whole-job peaks of
# allocated and reserved GPU memory, kept across ModelOpt's reset when scoring starts):
#   1. the bench model (scripts/make_tiny_qwen3vl.py --preset bench), generated if missing;
#   2. the 6 CUDA-only pairs on it: wfp4_afp16 wfp4_afp8 wfp4_afp4 wmxfp4_afp16 wmxfp4_afp8
#      wmxfp4_amxfp4;
#   3. a model.init=random Qwen3-VL-2B-shaped job in bf16 with gradient scoring;
#   4. the same for Qwen3-VL-4B when time and GPU memory allow (--skip-4b skips it).
# Writes DIR/gpu-smoke.json and DIR/gpu-smoke.md (default DIR: gpu-smoke) and prints the latter:
# each planned memory term next to the measured one, with measured / planned. Exit status: 0
# all phases passed, 1 a phase failed or timed out, 2 bad arguments or no CUDA device.
set -euo pipefail

usage() {
    sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//'
}

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(dirname "$here")"
out="gpu-smoke"
skip_4b=0
timeout=470

while [[ $# -gt 0 ]]; do
    case "$1" in
        -h|--help) usage; exit 0 ;;
        --out) [[ $# -ge 2 ]] || { echo "error: --out needs a directory" >&2; exit 2; }
               out="$2"; shift 2 ;;
        --out=*) out="${1#--out=}"; shift ;;
        --skip-4b) skip_4b=1; shift ;;
        --timeout) [[ $# -ge 2 ]] || { echo "error: --timeout needs seconds" >&2; exit 2; }
                   timeout="$2"; shift 2 ;;
        --timeout=*) timeout="${1#--timeout=}"; shift ;;
        *) echo "error: unknown argument '$1' (see --help)" >&2; exit 2 ;;
    esac
done
if ! [[ "$timeout" =~ ^[0-9]+$ ]] || [[ "$timeout" -le 0 ]]; then
    echo "error: --timeout '$timeout' is not a positive number of seconds" >&2
    exit 2
fi

python="${PYTHON:-}"
if [[ -z "$python" ]]; then
    if [[ -x "$root/.venv/bin/python" ]]; then python="$root/.venv/bin/python"; else python=python3; fi
fi

# Before anything else: a CUDA device torch can use (no NVIDIA device node: no need to ask torch).
no_cuda() {
    echo "error: no CUDA device available to torch on this machine ($python). The GPU smoke test" \
         "needs one NVIDIA GPU; run it on a GPU host. Nothing was done." >&2
    exit 2
}
compgen -G "/dev/nvidia[0-9]*" >/dev/null || command -v nvidia-smi >/dev/null || no_cuda
if ! "$python" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 3)' 2>/dev/null; then
    no_cuda
fi

[[ "$out" = /* ]] || out="$PWD/$out"  # relative to where the script was called, not the repo
args=(--out "$out" --timeout "$timeout")
[[ "$skip_4b" -eq 1 ]] && args+=(--skip-4b)
cd "$root"
exec "$python" "$here/gpu_smoke.py" "${args[@]}"
