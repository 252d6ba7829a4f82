#!/usr/bin/env bash
# CPU benchmark suite (float32, small sizes). Usage: bash benchmarks/run_cpu.sh [part...]; parts: decode train prefill moe padding
# attention export (default: all of them; export: export-hf's peak memory on a 1.1B spec, ~2 min and 5 GB).
# Results are appended to benchmarks/results/*.json; then `python benchmarks/summarize.py` rewrites RESULTS.md.
set -u
cd "$(dirname "$0")"
export PYTHONUNBUFFERED=1 PYTHONPATH="$(cd .. && pwd):${PYTHONPATH:-}"
for part in ${@:-decode train prefill moe padding attention export}; do
  case $part in
    decode)  python decode.py --device cpu --repeats 11 ;;
    train)   python train_step.py --device cpu --repeats 9 ;;
    prefill) python prefill.py --device cpu --repeats 7
             python prefill.py --device cpu --repeats 5 --family gemma2 --variants archspec-eager,hf-eager
             python prefill.py --device cpu --repeats 5 --family gpt_oss --variants archspec-eager,hf-eager ;;
    moe)     python moe_dispatch.py --device cpu --repeats 15 ;;
    padding) python padding.py --device cpu --repeats 9 ;;
    attention) python attention.py --device cpu --repeats 5 ;;
    export)  python export_memory.py ;;
    *)       echo "unknown part $part" >&2; exit 2 ;;
  esac
done
python summarize.py
