# Packing diagnostics and the 1B speed, one setup at a time (was call2.sh): issue 17.9's diagnostics (rows of 1,024 packed: packing check, cuDNN, the dense-mask path) while the
# speed benchmark prepares its data, then issue 22 on the 1B shape alone on the GPU (train stage, bare Unsloth packing
# and defaults, the fixed-shape loop) and generation warm-up against the steady rate.
# (xformers 0.0.35 does not load with torch 2.11 here, memory_estimate_fit.sh showed: one pass, SDPA.) Run from .gpuwork.
. benchmarks/gpu/common.sh
ROWS=${ROWS:-600}
C1="1024x8 960x8 1088x8 1024x6" C2="1024x8 4096x2" C3="1024x8 4096x2 2048x4"
[ "${DRY:-0}" = 1 ] && ROWS=60 C1="64x2" C2="64x2" C3="64x2"
cat "$OUT/env.txt"
build m1b49 $B1 & build m1b128 $B1 --vocab 128256 & wait
D="--medquad $W/data200/medquad_sample.jsonl --pubmedqa $W/data200/pubmedqa_pqal.jsonl"
job diag 170 "$SITE_X" $MEMB /tmp/m1b128 $C1 --r 16 --tag diag --profile 1024x8 --jsonl rows.jsonl &
job diag-nocheck 170 "$SITE_X" $MEMB /tmp/m1b128 $C2 --r 16 --tag diag --no-packing-check --jsonl rows.jsonl &
job diag-nocudnn 170 "$SITE_X" $MEMB /tmp/m1b128 $C2 --r 16 --tag diag --no-cudnn --jsonl rows.jsonl &
job diag-dense 170 "$SITE_X" env UNSLOTH_SDPA_PACKED_SEGMENTS=0 $MEMB /tmp/m1b128 $C3 --r 16 --tag dense-mask \
  --jsonl rows.jsonl &
job prep 170 "$SITE_X" $PY "$W/benchmarks/train_speed.py" /tmp/m1b49 /tmp/jobs/bx --rows $ROWS --shape Llama-3.2-1B \
  --setups "" $D &
wait
job speed 280 "$SITE_X" $PY "$W/benchmarks/train_speed.py" /tmp/m1b49 /tmp/jobs/bx --shape Llama-3.2-1B --gpus 0 \
  --setups project,unsloth-packing,unsloth-fixed,unsloth-default --slow-steps 20 --skip-prepare $D
job gen 70 "$SITE_X" $PY "$W/benchmarks/generation.py" /tmp/jobs/bx/runs/project --new-tokens 64 --prompts 64 \
  --single-prompts 4 --batches 16 64 --paths adapter
mkdir -p "$OUT/speed"
cp /tmp/jobs/bx/table.md "$OUT/speed/table.md" 2>/dev/null
tar czf "$OUT/speed/bx.tgz" -C /tmp/jobs/bx --exclude='*.safetensors' --exclude='ckpt-*' --exclude='checkpoints' \
  --exclude='data' --exclude='unsloth_compiled_cache' --exclude='*.pt' --exclude='*.bin' . 2>/dev/null
finish
