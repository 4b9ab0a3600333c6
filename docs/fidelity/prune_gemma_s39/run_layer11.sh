#!/bin/bash
# the session 38 Gemma grid (../prune_gemma_s38) with the pruning layer at 11 instead of the default 5, THREADS threads (default 1)
for s in ${SEEDS:-0 1 2}; do
  pyuncomp eval passkey niah_multikey cwe qa --model gemma3-270m --methods uncomp --ratios 0.05,0.1 \
    --prefill-keeps 0.5 --prefill-layer 11 --prefill-window 32 --lengths 2048 --samples 2 --seed $s --threads ${THREADS:-1} \
    --quiet --out layer11_seed$s > layer11_seed$s.log 2>&1
done
