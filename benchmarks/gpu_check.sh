#!/usr/bin/env bash
# One prepared GPU check (at most ~10 minutes on one GPU): CUDA, bf16 autocast, pinned memory and NCCL
# under torchrun for dump and train-student, and tokens/s at paper scale. One JSON line per check.
#   bash benchmarks/gpu_check.sh            (from the repository root, after `make .venv/.installed`)
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
OUT=${OUT:-$(mktemp -d)}
NGPU=$($PY -c "import torch; print(torch.cuda.device_count())")
check() {  # name, command...: runs it with a timeout, prints {"check": name, "ok": ..., "seconds": ...}
    local name=$1; shift
    local t0=$(date +%s.%N)
    timeout 240 "$@" > "$OUT/$name.log" 2>&1
    local rc=$?
    local dt=$(echo "$(date +%s.%N) - $t0" | bc)
    echo "{\"check\": \"$name\", \"ok\": $([ $rc -eq 0 ] && echo true || echo false), \"rc\": $rc, \"seconds\": $dt, \"log\": \"$OUT/$name.log\"}"
}
echo "{\"check\": \"devices\", \"gpus\": $NGPU, \"torch\": \"$($PY -c 'import torch; print(torch.__version__, torch.version.cuda)')\"}"
[ "$NGPU" -ge 1 ] || { echo '{"check": "cuda", "ok": false, "why": "no CUDA device"}'; exit 1; }

# tiny data and teachers (CPU-built, as the tests do), then every GPU path on them
$PY - "$OUT" <<'PYEOF'
import sys
from pathlib import Path
sys.path.insert(0, "tests")
from conftest import write_tiny_corpus, tiny_train
from logitcache.prepare import PrepareConfig, prepare
from logitcache.train_teacher import TeacherConfig, train_teacher
out = Path(sys.argv[1])
raw = write_tiny_corpus(out / "raw", {"train": 2400, "dev": 200, "test": 80})
prepare(PrepareConfig(data=raw, out=out / "data", vocab_size=300, seq_len=32))
for arch in ("llama", "gpt2"):
    train_teacher(TeacherConfig(data=out / "data", out=out / arch, arch=arch, preset=f"{arch}-tiny",
                                train=tiny_train(10, device="cuda", precision="bf16")))
PYEOF
D="--data $OUT/data --teacher $OUT/llama --teacher $OUT/gpt2"
# the fused head loss and the mixed-tokenizer dump on CUDA against their references (benchmarks/gpu_parity.py)
check gpu_parity $PY benchmarks/gpu_parity.py --out $OUT/parity
grep -h '^{' "$OUT/gpu_parity.log" | tail -1
check dump_cuda_bf16 .venv/bin/logitcache dump $D --out $OUT/c1.zarr --device cuda --precision bf16 --top-k 8 --block-rows 32
check dump_parity_cpu_vs_cuda_fp32 $PY - <<PYEOF
import numpy as np, subprocess, sys
from logitcache import open_cache
for dev in ("cpu", "cuda"):
    subprocess.run([".venv/bin/logitcache", "dump", *"$D".split(), "--out", f"$OUT/p-{dev}.zarr", "--device", dev,
                    "--precision", "fp32", "--top-k", "8", "--prob-dtype", "float32", "--block-rows", "32"], check=True)
a, b = (open_cache(f"$OUT/p-{d}.zarr").read(0, 64) for d in ("cpu", "cuda"))
assert np.abs(a.probs - b.probs).max() < 1e-4, np.abs(a.probs - b.probs).max()
PYEOF
if [ "$NGPU" -ge 2 ]; then
  check dump_torchrun_nccl $PY -m torch.distributed.run --standalone --nproc-per-node 2 -m logitcache_cli dump $D \
      --out $OUT/c2.zarr --device cuda --top-k 8 --block-rows 32 --overwrite
  check student_torchrun_ddp_nccl $PY -m torch.distributed.run --standalone --nproc-per-node 2 -m logitcache_cli \
      train-student --cache $OUT/c1.zarr --data $OUT/data --out $OUT/s2 --preset llama-tiny --max-steps 20 --batch-size 16 \
      --device cuda --precision bf16 --val-chunks 16
  check student_torchrun_fsdp_nccl $PY -m torch.distributed.run --standalone --nproc-per-node 2 -m logitcache_cli \
      train-student --cache $OUT/c1.zarr --data $OUT/data --out $OUT/s3 --preset llama-tiny --max-steps 20 --batch-size 16 \
      --device cuda --precision bf16 --val-chunks 16 --fsdp --activation-checkpointing
  check student_fsdp_saved_model_loads $PY -c "from transformers import AutoModelForCausalLM as M; M.from_pretrained('$OUT/s3')"
else
  echo '{"check": "nccl", "ok": null, "why": "one GPU: torchrun with NCCL needs two"}'
fi
check student_cuda_bf16_pinned .venv/bin/logitcache train-student --cache $OUT/c1.zarr --data $OUT/data --out $OUT/s1 \
    --preset llama-tiny --max-steps 30 --batch-size 16 --device cuda --precision bf16 --val-chunks 16
check student_cuda_activation_checkpointing .venv/bin/logitcache train-student --cache $OUT/c1.zarr --data $OUT/data \
    --out $OUT/s4 --preset llama-tiny --max-steps 10 --batch-size 16 --device cuda --precision bf16 --val-chunks 16 \
    --activation-checkpointing
# the memory plan beside the real peak (torch.cuda.max_memory_allocated) of the same step: LLaMA 4 x 512,
# V = 128,256, 8 x 512 tokens, top-32, with and without activation checkpointing, in fp32 and under bf16 autocast
for precision in fp32 bf16; do
  check plan_vs_peak_$precision $PY benchmarks/bench_plan.py --device cuda --precision $precision --steps 3
  sed -n '/^step memory/,/^$/p' "$OUT/plan_vs_peak_$precision.log"
done
# paper scale: the teachers' forward, the dump and the student steps on the GPU
check paper_scale $PY benchmarks/bench_paper_scale.py --steps 8 --batch-size 32 --chunks 256 --dump-batch 32 --device cuda
grep -h '^{' "$OUT/paper_scale.log" | tail -1
