#!/usr/bin/env bash
# Issue #4's GPU runs on an H100 machine without network. Here (with network):
#   bash tools/device_pack.sh        # wheels, the patched llama.cpp tree, synth_gguf.py -> .src/;
#                                    # SmolLM2's GGUF in parts -> .carry/ (it is over the 64 MiB carry limit)
# There, from the repository root, with .src (and SmolLM2's parts, one or more per call) carried:
#   bash benchmarks/run_h100.sh [cuda_bench args...]     # e.g. --depths 8192 32768 65536
# It builds pyuncomp with CUDA (PYUNCOMP_REUSE_BUILD=1: keep a warm machine's build), then, each step
# skipped when it has nothing to do:
#   - native/tests/test-uncomp-device-ops against the CUDA libllama: each device step on CUDA and on the
#     CPU against references on random inputs (always);
#   - PROBE_CACHES (default "f16 q8_0"): the CUDA path keeps what the CPU path keeps, same prompt,
#     small random model (tools/compress_probe.py); a next turn over a per-head layout evaluated as one
#     batch gives the logits it gives one token at a time (tools/chunk_probe.py, also on SmolLM2);
#   - SmolLM2 passkeys on the CPU and on CUDA, compared, once every part of its GGUF has arrived
#     (parts are kept in /tmp/parts between calls of a warm machine: carry .src and part0 in one call,
#     then, within the machine's 30 s of warmth, .src and the next part with PYUNCOMP_REUSE_BUILD=1, as session
#     23 did); PASSKEY_ARGS are added to tools/passkey_answers.py's (e.g. "--prefill-keep 0.5"); PASSKEYS=0
#     skips them (a call that only wants SmolLM2 assembled, e.g. for docs/fidelity/layer_split_s24/sweep.py);
#   - SWEEP="sweep.py args": the policy sweep on SmolLM2 on the GPU (SWEEP_SEEDS, SWEEP_LIMIT_S);
#   - EVAL="pyuncomp eval args[; args...]": the harness on SmolLM2 on the GPU, once per seed of EVAL_SEEDS
#     (default 0) and argument set, all within EVAL_LIMIT_S (default 500) s, into $OUT/eval.tgz (one folder a run);
#     EVAL_SYNTH=1 runs it on a random SmolLM2-shaped GGUF written there instead (no parts to carry: one call);
#   - PRUNE_PROBE=1: the pruned prefill on CUDA against the CPU, step by step on the eval's prompts (tools/graph_replay_probe.py --scenario eval);
#   - PLOT_PROBE=1: which import or subprocess crashes the device image's Python after pyuncomp (matplotlib);
#   - GRAPH_PROBE=1: CUDA graphs on against off under the harness's flow on a random SmolLM2-shaped model (no parts needed);
#   - SOAK_CALLS=N: N generate calls with compression on SmolLM2 on the GPU (tools/soak.py), RSS and
#     GPU memory every 10 calls (needs SmolLM2's parts);
#   - SCHED_DEBUG=1: where the scheduler puts a compressed 8B layer's attention during decode;
#   - DECODE_KERNELS="DEPTH RATIO": one decoded token's kernels on the 8B shape, stock, snapkv and uncomp,
#     under Nsight Compute (benchmarks/decode_kernels.py), summed per kernel into $OUT/decode_kernels.txt;
#   - LOOKAHEAD_COST="args": benchmarks/lookahead_cost.py on the 8B shape on the GPU with flash attention
#     (e.g. "--lengths 8192 32768"), into $OUT/lookahead_cost.txt;
#   - COMPRESS_PROBE="args": tools/prune_compress_probe.py on the 8B shape, into $OUT/compress_probe.txt;
#   - benchmarks/cuda_bench.py on a Llama-3-8B-shaped random Q4_0 GGUF written here, when given args.
set -euo pipefail
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
source tools/device_build.sh
export PYTHONUNBUFFERED=1
synth() { PYTHONPATH=third_party/llama.cpp/gguf-py:$PYTHONPATH python3 .src/synth_gguf.py "$@" >/dev/null; }
# a random GGUF of SmolLM2's shape (30 layers, 3 KV heads) at /tmp/smol_shape.gguf, written once
smol_shape() { [ -f /tmp/smol_shape.gguf ] || synth /tmp/smol_shape.gguf --layers 30 --embd 576 --ff 1536 --heads 9 --kv-heads 3 --vocab 49152 --ctx 8192; }

LIB=$SITE/pyuncomp/lib
g++ -O2 -std=c++17 native/tests/test-uncomp-device-ops.cpp -Inative/src -Ithird_party/llama.cpp/include \
    -Ithird_party/llama.cpp/ggml/include -L"$LIB" -lllama -lggml -lggml-base -Wl,-rpath,"$LIB" -o /tmp/test-uncomp-device-ops
/tmp/test-uncomp-device-ops || echo "test-uncomp-device-ops FAILED"

if [ -n "${PROBE_CACHES-f16 q8_0}" ]; then
    synth /tmp/small.gguf --layers 8 --embd 1024 --ff 2816 --heads 16 --kv-heads 4 --vocab 32000 --ctx 8192
    for cache in ${PROBE_CACHES-f16 q8_0}; do
        python3 tools/compress_probe.py /tmp/cpu.npz --model /tmp/small.gguf --cache $cache --n-gpu-layers 0
        python3 tools/compress_probe.py /tmp/cuda.npz --model /tmp/small.gguf --cache $cache --n-gpu-layers -1
        python3 tools/compress_probe.py --compare /tmp/cpu.npz /tmp/cuda.npz || true
        python3 tools/chunk_probe.py --model /tmp/small.gguf --cache $cache --n-gpu-layers -1 || true
    done
fi

mkdir -p /tmp/parts
cp .carry/smollm2.* /tmp/parts/ 2>/dev/null || true
if [ -f /tmp/parts/smollm2.sha256 ] && [ ! -f /tmp/smollm2.gguf ]; then
    cat /tmp/parts/smollm2.part* > /tmp/smollm2.tmp
    if [ "$(sha256sum < /tmp/smollm2.tmp | cut -d' ' -f1)" = "$(cat /tmp/parts/smollm2.sha256)" ]; then
        mv /tmp/smollm2.tmp /tmp/smollm2.gguf
    else
        echo "SmolLM2: parts so far: $(ls /tmp/parts | tr '\n' ' ')"
    fi
fi
if [ -f /tmp/smollm2.gguf ] && [ "${PASSKEYS:-1}" = 1 ]; then
    for ngl in 0 -1; do
        python3 tools/passkey_answers.py "$OUT/passkey_ngl$ngl.json" --model /tmp/smollm2.gguf --n-gpu-layers $ngl ${PASSKEY_ARGS:-}
    done
    python3 tools/passkey_answers.py --compare "$OUT/passkey_ngl0.json" "$OUT/passkey_ngl-1.json" || true
    python3 tools/chunk_probe.py --model /tmp/smollm2.gguf --n-gpu-layers -1 || true
    if [ -n "${SOAK_CALLS:-}" ]; then
        python3 tools/soak.py --model /tmp/smollm2.gguf --calls "$SOAK_CALLS" --n-gpu-layers -1 | tee "$OUT/soak_gpu.txt"
    fi
fi
# SWEEP="args": docs/fidelity/layer_split_s24/sweep.py on SmolLM2 on the GPU with those arguments and the
# seeds SWEEP_SEEDS (default 0-5), stopped after SWEEP_LIMIT_S (default 500) s with the tasks it finished
# (it saves after each): $OUT/sweep.json, $OUT/sweep.log. One process: six at once (a seed each, 8 llama.cpp
# threads each on 16 cores) finished no task in 520 s on an H200 (session 32)
if [ -f /tmp/smollm2.gguf ] && [ -n "${SWEEP:-}" ]; then
    (cd docs/fidelity/layer_split_s24 && GGML_CUDA_DISABLE_GRAPHS=1 timeout "${SWEEP_LIMIT_S:-500}" python3 sweep.py \
        "$OUT/sweep.json" --model /tmp/smollm2.gguf --n-gpu-layers -1 --seeds ${SWEEP_SEEDS:-0 1 2 3 4 5} $SWEEP \
        > "$OUT/sweep.log" 2>&1) || echo "the sweep ended with an error or its time limit"
    tail -n 5 "$OUT/sweep.log"
fi
# EVAL="args[; args...]": `pyuncomp eval` on SmolLM2 on the GPU for each seed of EVAL_SEEDS and, within a seed,
# each ';'-separated argument set (set i into folder seed<seed>_<i>), all sharing EVAL_LIMIT_S; what finished
# comes back in $OUT/eval.tgz (results.json, summary.md, plots and the log of each run); EVAL_ENV="VAR=value ..."
# sets variables for them (e.g. CUDA_LAUNCH_BLOCKING=1 UNCOMP_TIMING=1, to place an abort); EVAL_SYNTH=1: on a
# random SmolLM2-shaped model (its answers are meaningless; shapes, tokens and control flow are the harness's)
eval_model=/tmp/smollm2.gguf
if [ -n "${EVAL:-}" ] && [ "${EVAL_SYNTH:-0}" = 1 ]; then
    eval_model=/tmp/smol_shape.gguf; smol_shape
fi
if [ -f $eval_model ] && [ -n "${EVAL:-}" ]; then
    end=$((SECONDS + ${EVAL_LIMIT_S:-500})); mkdir -p /tmp/eval_gpu
    IFS=';' read -r -a eval_sets <<< "$EVAL"
    # EVAL_GRAPH_LOG=1: ggml-cuda's CUDA graph events (captured, reused, reset) in each run's log, among its lines
    eval_cmd=(python3 -m pyuncomp)
    [ "${EVAL_GRAPH_LOG:-0}" = 1 ] && eval_cmd=(python3 -c "import sys; sys.path.insert(0, '$PWD/tools'); import graph_replay_probe as g; \
g.log_graph_events({'label': 'eval'}); from pyuncomp.cli import main; raise SystemExit(main())")
    # EVAL_COREDUMP=1: a device exception writes a GPU core dump (no memory images), read back by cuda-gdb after the
    # run: the faulting kernel, its launch and its frames (a debugger attached throughout would slow the run)
    coredump_env=()
    [ "${EVAL_COREDUMP:-0}" = 1 ] && coredump_env=(CUDA_ENABLE_COREDUMP_ON_EXCEPTION=1 CUDA_ENABLE_CPU_COREDUMP_ON_EXCEPTION=0
        CUDA_COREDUMP_FILE=/tmp/eval_core_%p.cudacore
        CUDA_COREDUMP_GENERATION_FLAGS=skip_nonrelocated_elf_images,skip_global_memory,skip_shared_memory,skip_local_memory)
    for seed in ${EVAL_SEEDS:-0}; do
        for i in "${!eval_sets[@]}"; do
            run="seed${seed}_$i"
            rc=0; (cd /tmp && env "${coredump_env[@]}" ${EVAL_ENV:-} timeout $((end - SECONDS)) "${eval_cmd[@]}" eval ${eval_sets[$i]} --model $eval_model \
                --n-gpu-layers -1 --seed "$seed" --quiet --out "/tmp/eval_gpu/$run" > "/tmp/eval_gpu_$run.log" 2>&1) || rc=$?
            echo "eval $run: exit $rc, $SECONDS s"; tail -n 3 "/tmp/eval_gpu_$run.log"
            mkdir -p "/tmp/eval_gpu/$run" && cp "/tmp/eval_gpu_$run.log" "/tmp/eval_gpu/$run/eval.log" # an abort's backtrace comes back too
            for core in /tmp/eval_core_*.cudacore; do
                [ -f "$core" ] || continue
                timeout 60 cuda-gdb -q -batch -ex "target cudacore $core" -ex "info cuda kernels" -ex bt -ex "x/6i \$pc-48" -ex "x/4i \$pc" \
                    2>&1 | tee "/tmp/eval_gpu/$run/cudacore.txt" | tail -40 || true
                rm -f "$core"
            done
            [ $SECONDS -lt $end ] || break 2
        done
    done
    tar czf "$OUT/eval.tgz" -C /tmp eval_gpu
fi
# PRUNE_PROBE=1: the pruned prefill on CUDA against the CPU, on the eval's own multi-key 2k prompts in its order
# (session 27: on the H200 runs of same-length pruned prefills answered NaN where the CPU did not): every
# evaluation's finiteness, argmax and top logits (tools/graph_replay_probe.py --scenario eval) as the harness
# runs it, with CUDA graphs off, with the model loaded afresh for every prompt, and with flash attention,
# each compared with the CPU's recorded steps (docs/fidelity/prune_gpu_s30/cpu_multikey_2k.jsonl)
if [ -f /tmp/smollm2.gguf ] && [ "${PRUNE_PROBE:-0}" = 1 ]; then
    prune_probe() {
        local name=$1; shift
        rc=0; (cd /tmp && env UNCOMP_TIMING=1 "$@" python3 -X faulthandler "$OLDPWD/tools/graph_replay_probe.py" "$OUT/$name.jsonl" \
            --model /tmp/smollm2.gguf --scenario eval --tasks niah_multikey --n-ctx 4608 ${PRUNE_PROBE_ARGS:-} \
            $([ "$name" = fresh ] && echo --fresh) $([ "$name" = flash ] && echo --flash-attn) > "/tmp/$name.log" 2>&1) || rc=$?
        echo "== $name: exit $rc; $(grep -c '"finite": false' "$OUT/$name.jsonl") non-finite steps"; { grep -v "^uncomp " "/tmp/$name.log" || true; } | tail -3
        # the tokens each pruned prefill kept (UNCOMP_TIMING's hash), against the CPU's
        grep "^uncomp prefill" "/tmp/$name.log" | sed 's/.*(\(.*\)).*/\1/' | diff docs/fidelity/prune_gpu_s30/cpu_kept_hashes.txt - \
            && echo "kept tokens: as on the CPU" || true
        python3 tools/graph_replay_probe.py --compare docs/fidelity/prune_gpu_s30/cpu_multikey_2k.jsonl "$OUT/$name.jsonl" \
            --tolerance 0.05 | { grep -v decode || true; } | tail -24 || true
    }
    for variant in ${PRUNE_PROBE_VARIANTS:-graphs nographs fresh flash}; do
        case $variant in
            graphs) prune_probe graphs ;;
            nographs) prune_probe nographs GGML_CUDA_DISABLE_GRAPHS=1 ;;
            fresh) prune_probe fresh ;;
            flash) prune_probe flash ;;
            # the harness's model keeps one cache (shrink_cache=False); UNCOMP_CHECK_FINITE reports NaN K/V cells
            noshrink) PRUNE_PROBE_ARGS="--no-shrink" prune_probe noshrink UNCOMP_CHECK_FINITE=1
                      grep "^uncomp check" /tmp/noshrink.log | grep -v " 0 non-finite" | head -20 || true ;;
            # session 27's own command (it stops at the first non-finite logits), the checks' lines before that
            eval) rc=0; (cd /tmp && UNCOMP_CHECK_FINITE=1 python3 -m pyuncomp eval passkey niah_multikey niah_multivalue \
                      --model /tmp/smollm2.gguf --n-gpu-layers -1 --methods full,uncomp --ratios 0.05,0.1 --prefill-keeps 0.5 \
                      --prefill-min-tokens 0 --lengths 2048 --samples 2 --seed 0 --quiet --out /tmp/eval_s27 > /tmp/eval.log 2>&1) || rc=$?
                  echo "== eval: exit $rc"; { grep -v "^uncomp check" /tmp/eval.log || true; } | tail -2
                  grep -n "^uncomp check" /tmp/eval.log | grep -v " 0 non-finite" | head -20 || true
                  grep -c "^uncomp check" /tmp/eval.log || true; cp /tmp/eval.log "$OUT/" ;;
        esac
    done
fi

# GRAPH_PROBE=1: CUDA graphs against direct execution under the harness's flow, on a SmolLM2-shaped random model
# (no weights to carry): session 27's pruned-prefill grid (runs of same-length 2k prompts) through `pyuncomp eval`,
# graphs off (the reference) and on, compared answer by answer (tools/eval_compare.py); and every evaluation's
# logits of the harness's steps and of recalled chats, 2k to 4k (tools/graph_replay_probe.py, where ggml-cuda
# captured a graph in the .log). The exit status of each run is printed; everything goes to $OUT/graph_probe.tgz
if [ "${GRAPH_PROBE:-0}" = 1 ]; then
    smol_shape
    mkdir -p /tmp/gp
    for graphs in off on; do
        env=(); [ $graphs = off ] && env=(GGML_CUDA_DISABLE_GRAPHS=1)
        rc=0; (cd /tmp && env "${env[@]}" python3 -X faulthandler -m pyuncomp eval niah_multikey niah_multivalue passkey \
            --model /tmp/smol_shape.gguf --n-gpu-layers -1 --lengths 2048 --samples 2 --seed 0 --methods uncomp \
            --ratios 0.1 --prefill-keeps 0.5 --quiet --out /tmp/gp/eval_$graphs > /tmp/gp/eval_$graphs.log 2>&1) || rc=$?
        echo "eval, graphs $graphs: exit $rc"
        for scenario in harness recall; do
            rc=0; (cd /tmp && env "${env[@]}" python3 -X faulthandler "$OLDPWD/tools/graph_replay_probe.py" /tmp/gp/${scenario}_$graphs.jsonl \
                --model /tmp/smol_shape.gguf --scenario $scenario --log-graphs > /tmp/gp/${scenario}_$graphs.log 2>&1) || rc=$?
            echo "$scenario, graphs $graphs: exit $rc"
        done
    done
    python3 tools/eval_compare.py /tmp/gp/eval_off/results.json /tmp/gp/eval_on/results.json | tail -12
    for scenario in harness recall; do
        python3 tools/graph_replay_probe.py --compare /tmp/gp/${scenario}_off.jsonl /tmp/gp/${scenario}_on.jsonl | tail -8
    done
    tar czf "$OUT/graph_probe.tgz" -C /tmp gp
fi

# PLOT_PROBE=1: session 30's `pyuncomp eval` on the GPU exited with SIGSEGV after writing its results, in
# `import matplotlib.pyplot` (a call through a null pointer right after a vfork, under cuda-gdb): which of
# pyuncomp, CUDA, a subprocess and vfork it takes. Each command's exit status (139 = SIGSEGV). Found (session
# 31): none of those; our libraries carried a static C++ runtime (tools/device_build.sh now links the shared one)
if [ "${PLOT_PROBE:-0}" = 1 ]; then
    summary="[{'task': 'passkey', 'length': 2048, 'setting': 'full', 'score': 1.0, 'samples': 1, 'kv_fraction': 1.0}]"
    plot="import pyuncomp.eval.report as r; from pathlib import Path; r.plot_summary($summary, Path('/tmp/p.png'))"
    novfork="import subprocess; subprocess._USE_VFORK = False"
    while IFS='|' read -r env code; do
        rc=0; (cd /tmp && env $env timeout 120 python3 -c "$code" </dev/null >/tmp/plot_probe.log 2>&1) || rc=$?
        echo "exit $rc | ${env:-} | $code"
    done <<PROBES | tee "$OUT/plot_probe.txt"
|import subprocess; subprocess.run(['true'])
|import pyuncomp, subprocess; subprocess.run(['true'])
|$novfork; import pyuncomp; subprocess.run(['true'])
|import pyuncomp, os; os.system('true')
|import pyuncomp; import matplotlib.pyplot
|import json; from pathlib import Path; import pyuncomp; import matplotlib.pyplot
|$plot
|$novfork; $plot
CUDA_VISIBLE_DEVICES=|$plot
|import matplotlib; matplotlib.use('Agg'); import matplotlib.pyplot; $plot
PROBES
    # which of pyuncomp's libraries define C++ runtime symbols, and what other objects bind to them
    for f in "$SITE"/pyuncomp/lib/*.so; do
        echo "$(basename "$f"): $(nm -D --defined-only "$f" | grep -c ' T _ZNSo\| T _ZNSi\| T _ZNKSt\| T __cxa') runtime symbols;" \
            "NEEDED $(readelf -d "$f" | grep NEEDED | sed 's/.*\[\(.*\)\]/\1/' | tr '\n' ' ')"
    done | tee -a "$OUT/plot_probe.txt"
    (cd /tmp && LD_DEBUG=bindings python3 -c "import pyuncomp; import matplotlib.pyplot" 2>&1 | grep "to $SITE/pyuncomp/lib" | \
        grep -v "binding file $SITE/pyuncomp/lib" | sed 's/^ *[0-9]*://' | sort | uniq -c | sort -rn | head -30) | tee -a "$OUT/plot_probe.txt" || true
fi

# CRASH_PROBE=1: where the machine's Python crashes with pyuncomp (session 29: numpy imported before pyuncomp
# segfaulted while loading; `pyuncomp eval` on the GPU exited with SIGSEGV after writing its results): native
# backtraces under cuda-gdb, on the random SmolLM2-shaped model of GRAPH_PROBE
if [ "${CRASH_PROBE:-0}" = 1 ]; then
    smol_shape
    backtrace() { (cd /tmp && timeout 240 cuda-gdb -q -batch -ex run -ex bt -ex "info sharedlibrary" --args "$@" 2>&1) | \
        grep -E "^#|signal|SIG|exited|libgomp|libiomp|omp|rror|cuda-gdb|loaded" | head -40 || true; }
    {
        echo "== numpy imported before pyuncomp, then a model loaded on the GPU"
        backtrace python3 -c "import numpy, pyuncomp; pyuncomp.Llama('/tmp/smol_shape.gguf', n_gpu_layers=-1, verbose=False); print('loaded')"
        echo "== a short pyuncomp eval on the GPU, to its exit"
        backtrace python3 -m pyuncomp eval passkey --model /tmp/smol_shape.gguf --n-gpu-layers -1 --lengths 2048 --samples 1 \
            --depths 0 --methods uncomp --ratios 0.1 --quiet --out /tmp/crash_eval
    } 2>&1 | tee "$OUT/crash_probe.txt"
fi

if [ "${SCHED_DEBUG:-0}" = 1 ]; then
    synth /tmp/llama8b.gguf --ctx 131072
    (cd /tmp && GGML_SCHED_DEBUG=2 python3 - >/tmp/sched.log 2>&1) <<'PY' || true
import pyuncomp
llm = pyuncomp.Llama("/tmp/llama8b.gguf", n_ctx=8192 + 512, n_batch=2048, n_gpu_layers=-1, flash_attn=True,
                     ratio=0.05, shrink_cache=False, verbose=True)
llm.eval([1] + [(7 * i) % 31000 + 100 for i in range(8191)])
llm.eval([500])
llm.eval([501])
PY
    awk '/## SPLIT #0/{buf=""} {buf=buf"\n"$0} END{print buf}' /tmp/sched.log | grep -E "SPLIT|FLASH_ATTN|ADD" | cut -c1-400 | head -24 || true
fi

if [ -n "${DECODE_KERNELS:-}" ]; then
    [ -f /tmp/llama8b.gguf ] || synth /tmp/llama8b.gguf --ctx 131072
    read -r depth ratio <<< "$DECODE_KERNELS"
    NCU=$(command -v ncu || ls /opt/nvidia/nsight-compute/*/ncu | head -1)
    for m in full snapkv uncomp; do
        "$NCU" --profile-from-start off --clock-control none --metrics gpu__time_duration.sum --csv \
            --log-file /tmp/kernels_$m.csv python3 benchmarks/decode_kernels.py /tmp/llama8b.gguf --depth "$depth" \
            --ratio "$ratio" --method $m >/dev/null || echo "ncu on $m failed"
    done
    python3 benchmarks/decode_kernels.py --summary /tmp/kernels_*.csv | tee "$OUT/decode_kernels.txt"
fi

if [ -n "${LOOKAHEAD_COST:-}" ]; then
    [ -f /tmp/llama8b.gguf ] || synth /tmp/llama8b.gguf --ctx 131072
    python3 benchmarks/lookahead_cost.py --model /tmp/llama8b.gguf --n-gpu-layers -1 --flash-attn --n-batch 2048 $LOOKAHEAD_COST \
        | tee "$OUT/lookahead_cost.txt" || echo "lookahead_cost.py failed"
fi

# COMPRESS_PROBE="args": tools/prune_compress_probe.py on the 8B shape (a pruned prefill's non-finite ranking
# scores and its slower compression, session 38), into $OUT/compress_probe.txt
if [ -n "${COMPRESS_PROBE:-}" ]; then
    [ -f /tmp/llama8b.gguf ] || synth /tmp/llama8b.gguf --ctx 131072
    python3 tools/prune_compress_probe.py --model /tmp/llama8b.gguf $COMPRESS_PROBE 2>&1 | tee "$OUT/compress_probe.txt" \
        | grep -v "^uncomp \(gram\|scores\)" || echo "prune_compress_probe.py failed"
fi

if [ $# -gt 0 ]; then
    [ -f /tmp/llama8b.gguf ] || synth /tmp/llama8b.gguf --ctx 131072
    python3 -X faulthandler benchmarks/cuda_bench.py /tmp/llama8b.gguf --json "$OUT/cuda_bench${BENCH_TAG:-}.json" "$@"
fi
