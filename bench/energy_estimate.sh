#!/usr/bin/env bash
# The energy estimate against the truth (docs/ENERGY.md): H100 SXM / Llama-3.1-8B, both
# shipped Azure 2023 traces at 50 % and 85 % peak, seeds 0-3, default SLOs; each run's
# results.json holds every policy's estimated saving beside its true one, and
# bench/estimate_table.py sets them side by side.
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-docs/bench/energy-estimate}"
seeds="${SEEDS:-0 1 2 3}"
dirs=()
for trace in azure_conv_2023 azure_code_2023; do
  for load in 0.5 0.85; do
    for seed in $seeds; do
      dir="${out}/${trace}/peak${load}/seed${seed}"
      .venv/bin/agft bench --peak-load "$load" --policies default,agft,rule,agft-paper \
        --no-plots --trace "sim/data/traces/${trace}.csv.gz" --seed "$seed" --quiet \
        --out "$dir" > /dev/null
      dirs+=("$dir")
    done
  done
done
.venv/bin/python -m bench.estimate_table "${dirs[@]}" | tee "${out}/table.md"
