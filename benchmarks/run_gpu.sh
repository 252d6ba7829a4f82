#!/usr/bin/env bash
# GPU benchmark suite (bf16). Usage: bash benchmarks/run_gpu.sh [part...]; parts: probe moe train padding prefill decode.
# Results are appended to $ARCHSPEC_BENCH_RESULTS (default benchmarks/results/).
set -u
cd "$(dirname "$0")"
export PYTHONUNBUFFERED=1 PYTHONPATH="$(cd .. && pwd):${PYTHONPATH:-}"
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.max.sm --format=csv
python3 -c "import torch, transformers; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'transformers', transformers.__version__, torch.cuda.get_device_name())"
for part in "${@:-probe moe train padding prefill decode}"; do
  case $part in
    probe)   python3 grouped_wgrad_probe.py ;;
    moe)     python3 moe_dispatch.py --device cuda --repeats 10 --warmup 3 ;;
    train)   python3 train_step.py --device cuda --families llama3 --size 1b --batch 4 --seq 2048 --repeats 5 --warmup 3 ;;
    padding) python3 padding.py --device cuda --size 1b --documents 32 --longest 2048 --repeats 5 --warmup 3 ;;
    prefill) python3 prefill.py --device cuda --size 1b --repeats 10 --warmup 3
             python3 prefill.py --device cuda --size 1b --repeats 10 --warmup 3 --family gemma2 --variants archspec-eager,archspec-compile,hf-eager
             python3 prefill.py --device cuda --size 1b --repeats 10 --warmup 3 --family gpt_oss --variants archspec-eager,archspec-compile,hf-eager ;;
    decode)  python3 decode.py --device cuda --size 8b --batches 1 --repeats 3 --warmup 2 ;;
  esac
done
