#!/usr/bin/env bash
# Reproduces the published benchmark tables (docs/BENCHMARK.md): both Azure 2023 traces on
# three GPU/model pairs, busiest minute at 85 % of capacity at max clock, default SLOs.
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-docs/bench}"
policies="default,rule,agft,agft-paper,best-static,oracle,oracle-plan"
for pair in "h100-sxm llama-3.1-8b" "a100-sxm llama-3.1-8b" "h100-sxm llama-2-70b"; do
  set -- $pair
  for trace in azure_conv_2023 azure_code_2023; do
    .venv/bin/agft bench --gpu "$1" --model "$2" --peak-load 0.85 --policies "$policies" \
      --trace "sim/data/traces/${trace}.csv.gz" --seed 0 --jobs 2 --quiet \
      --out "${out}/${trace}_${1}_${2}"
  done
done
# Extra: the code trace at half that load, where it is not overloaded at default clocks.
.venv/bin/agft bench --peak-load 0.5 --policies "$policies" \
  --trace sim/data/traces/azure_code_2023.csv.gz --seed 0 --jobs 2 --quiet \
  --out "${out}/extra_azure_code_2023_h100-sxm_llama-3.1-8b_peak0.5"
