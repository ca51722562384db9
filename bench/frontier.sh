#!/usr/bin/env bash
# agft's saving/attainment frontier against agft-paper over several seeds (docs/BENCHMARK.md
# §"Attainment against agft-paper"): H100 SXM / Llama-3.1-8B, both Azure 2023 traces, busiest
# minute at 85 % of capacity, default SLOs; agft at its defaults and with a stricter SLO-miss
# share. Each seed is one `agft bench` run; bench/spread.py sets the seeds side by side.
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-docs/bench/frontier}"
seeds="${SEEDS:-0 1 2 3}"
policies="default,agft-paper,agft,agft:miss_share_factor=0.7,agft:miss_share_factor=0.5"
for trace in azure_conv_2023 azure_code_2023; do
  dirs=()
  for seed in $seeds; do
    dir="${out}/${trace}/seed${seed}"
    .venv/bin/agft bench --peak-load 0.85 --policies "$policies" --no-plots \
      --trace "sim/data/traces/${trace}.csv.gz" --seed "$seed" --jobs 2 --quiet --out "$dir" \
      > /dev/null
    dirs+=("$dir")
  done
  .venv/bin/python -m bench.spread --against agft-paper --title "${trace} · H100 SXM · Llama-3.1-8B" \
    --out "${out}/${trace}.md" "${dirs[@]}"
done
