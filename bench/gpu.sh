#!/usr/bin/env bash
# One prepared run on a machine with a CUDA GPU: the CUDA tests, then the cost benchmarks on it.
#
#     bash bench/gpu.sh [SIZE ...]             # default sizes: 10000 50000
#     DEVICE=cpu PYTHON=.venv/bin/python bash bench/gpu.sh 300 600   # a dry run here (GPU tests skip)
#
# Logs and JSON go to $OUT (the device tool's result folder) or bench/gpu-out. Each step has its
# own time limit and writes its own files, so a step that runs out of time loses only itself.
# Runs from the repository root with $PYTHON (default python3, the one holding torch on the device
# machine) and PYTHONPATH=., no install.
set -uo pipefail
export PYTHONUNBUFFERED=1 PYTHONPATH=.
out=${OUT:-bench/gpu-out}
mkdir -p "$out"
device=${DEVICE:-cuda}
python=${PYTHON:-python3}
sizes=("$@")
[ ${#sizes[@]} -gt 0 ] || sizes=(10000 50000)

step() {  # step NAME SECONDS COMMAND...: run one step under a time limit, log to $out/NAME.log
    local name=$1 limit=$2
    shift 2
    echo "== $name ($(date +%T), limit ${limit}s)"
    timeout "$limit" "$@" >"$out/$name.log" 2>&1
    echo "   exit $? after ${SECONDS}s in all"
    tail -n 25 "$out/$name.log"
}

{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  "$python" -c "import sys, torch; print(sys.version.split()[0], torch.__version__, torch.cuda.get_device_name())"
  nproc; } >"$out/machine.txt" 2>&1
cat "$out/machine.txt"
step gpu-tests 90 "$python" -m pytest -p no:cacheprovider -q -m gpu tests/engine/test_gpu.py
step overhead 75 "$python" bench/overhead.py --device "$device"
step scale-small_cnn 150 "$python" bench/scale.py --device "$device" --models small_cnn \
    --sizes "${sizes[@]}" --out-json "$out/scale-small_cnn.json"
step scale-resnet9 180 "$python" bench/scale.py --device "$device" --models resnet9 \
    --sizes "${sizes[@]}" --out-json "$out/scale-resnet9.json"
