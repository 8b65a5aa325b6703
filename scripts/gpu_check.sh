#!/usr/bin/env bash
# The one GPU check (benchmarks/gpu_check.py; table in docs/benchmarks.md): random-weight Qwen2.5-VL of
# the 7B shape on one GPU, under 8 minutes: vLLM start-up, 8 prompts x G 8 with 8 frames (tokens/s),
# an in-place update from learner-named tensors (s), the log-prob gap against a transformers forward,
# one DeepSpeed ZeRO-3 bf16 GSPO step over NCCL. Writes gpu_check.json (or --out PATH).
#
#   scripts/gpu_check.sh                 # on a GPU machine: builds .venv-gpu (vllm + our deps) once
#   scripts/gpu_check.sh --dry-run       # anywhere: the same phases on CPU, tiny shape, fp32, gloo
#
# PY=path/to/python picks an existing venv instead (it needs our package; vLLM is optional in a dry run).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$PWD
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false VLLM_NO_USAGE_STATS=1 DO_NOT_TRACK=1
export VLLM_CACHE_ROOT=$ROOT/.cache/vllm TORCHINDUCTOR_CACHE_DIR=$ROOT/.cache/inductor
DRY=0
for arg in "$@"; do [[ $arg == --dry-run ]] && DRY=1; done
if [[ $DRY == 1 ]]; then
    export DS_ACCELERATOR=cpu VLLM_ENABLE_V1_MULTIPROCESSING=0 OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
    export VLLM_CPU_OMP_THREADS_BIND=${VLLM_CPU_OMP_THREADS_BIND:-nobind}
fi

if [[ -z ${PY:-} ]]; then
    VENV=${GPU_VENV:-.venv-gpu}
    PY=$VENV/bin/python
    if [[ ! -f $VENV/.stamp-gpu ]]; then
        echo "gpu check: installing vllm and stgrl's dependencies into $VENV (once)"
        test -x "$PY" || python3 -m venv "$VENV"
        "$VENV/bin/pip" install -q "vllm${VLLM_VERSION:+==$VLLM_VERSION}"
        # Our dependencies beside vLLM's torch/transformers, as in scripts/vllm_lane.sh.
        "$PY" -c 'import re, tomllib
held = {"torch", "torchvision", "transformers", "tokenizers"}
for d in tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"]:
    if re.match(r"[A-Za-z0-9_.-]+", d).group(0).lower() not in held: print(d)' > "$VENV/stgrl-deps.txt"
        "$VENV/bin/pip" freeze | grep -iE '^(torch|torchvision|transformers|tokenizers|numpy|safetensors)==' \
            > "$VENV/vllm-pins.txt"
        "$VENV/bin/pip" install -q -c "$VENV/vllm-pins.txt" -r "$VENV/stgrl-deps.txt"
        "$VENV/bin/pip" install -q --no-deps --no-build-isolation -e .
        touch "$VENV/.stamp-gpu"
    fi
fi
exec timeout "${GPU_CHECK_TIMEOUT_S:-900}" "$PY" benchmarks/gpu_check.py "$@"
