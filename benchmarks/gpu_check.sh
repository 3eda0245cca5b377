#!/usr/bin/env bash
# The GPU check in one command, for a machine lent a GPU through the device tool (README "GPU").
#
#   bash benchmarks/gpu_check.sh [gpu_check.py options]      # e.g. --models ebc-rn50 --cameras 8
#
# 1. installs the carried wheels from .whl/ (made here by benchmarks/gpu_wheels.sh: open_clip,
#    PyAV, pydantic... that the device image lacks) into /tmp/site, when they fit this python;
# 2. runs benchmarks/gpu_check.py with PYTHONPATH=/tmp/site:<repo>, under a hard time limit
#    (GPU_CHECK_LIMIT_S, default 470 s: the whole command stays within 8 minutes even if a step
#    hangs; the script keeps its own budget of 400 s and rewrites its results after every step);
# 3. everything lands in $OUT when set (the device tool brings it back), else runs/gpu_check:
#    gpu_check_results.md (the one results file), gpu_check.log, pipeline_<N>cams.log.
set -uo pipefail
cd "$(dirname "$0")/.."
repo=$PWD
out=${OUT:-$repo/runs/gpu_check}
mkdir -p "$out"
py=${PYTHON:-python3}
limit=${GPU_CHECK_LIMIT_S:-470}
command="bash benchmarks/gpu_check.sh${*:+ $*}"
export PYTHONUNBUFFERED=1

shopt -s nullglob
wheels=(.whl/*.whl)
tag=$("$py" -c 'import sys; print(f"{sys.version_info[0]}{sys.version_info[1]}")')
if (( ${#wheels[@]} )) && [[ $tag == 312 ]]; then
    echo "installing ${#wheels[@]} carried wheels into /tmp/site"
    "$py" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site "${wheels[@]}" || { echo "gpu_check.sh: wheel install failed" >&2; exit 1; }
    export PYTHONPATH=/tmp/site:$repo${PYTHONPATH:+:$PYTHONPATH}
else
    (( ${#wheels[@]} )) && echo "not installing .whl/: the wheels are for Python 3.12, $py is $tag"
    export PYTHONPATH=$repo${PYTHONPATH:+:$PYTHONPATH}
fi

timeout --signal=TERM --kill-after=20 "$limit" \
    "$py" benchmarks/gpu_check.py --out "$out" --command "$command" "$@" 2>&1 \
    | tee "$out/gpu_check.log"
rc=${PIPESTATUS[0]}
(( rc == 124 )) && echo "gpu_check.sh: stopped at the ${limit} s limit; $out/gpu_check_results.md holds every step finished before"
exit "$rc"
