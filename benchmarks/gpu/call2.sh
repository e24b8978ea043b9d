# Device call 2: issue 22 on the 1B shape, one GPU, setups one after another: with xformers, the train stage, bare
# Unsloth packing and defaults, the fixed-shape loop; without xformers the same minus the defaults; then generation
# warm-up against the steady rate on the project setup's run. Run from .gpuwork: OUT=... bash benchmarks/gpu/call2.sh
. benchmarks/gpu/common.sh
ROWS=${ROWS:-400}
[ "${DRY:-0}" = 1 ] && ROWS=60
cat "$OUT/env.txt"
build m1b49 $B1
D="--medquad $W/data200/medquad_sample.jsonl --pubmedqa $W/data200/pubmedqa_pqal.jsonl"
job speed-x 330 "$SITE_X" $PY "$W/benchmarks/train_speed.py" /tmp/m1b49 /tmp/jobs/bx --rows $ROWS --shape Llama-3.2-1B \
  --gpus 0 --setups project,unsloth-packing,unsloth-fixed,unsloth-default --slow-steps 20 $D
mkdir -p /tmp/jobs/bn && cp -a /tmp/jobs/bx/prepared /tmp/jobs/bx/meta.json /tmp/jobs/bx/bench.yaml /tmp/jobs/bn/
job speed-nox 200 "$SITE_NOX" $PY "$W/benchmarks/train_speed.py" /tmp/m1b49 /tmp/jobs/bn --shape Llama-3.2-1B \
  --gpus 0 --setups project,unsloth-packing,unsloth-fixed --skip-prepare $D
job gen 100 "$SITE_X" $PY "$W/benchmarks/generation.py" /tmp/jobs/bx/runs/project --new-tokens 64 --prompts 64 \
  --single-prompts 4 --batches 16 64 --paths adapter
mkdir -p "$OUT/speed"
for d in bx bn; do cp /tmp/jobs/$d/table.md "$OUT/speed/$d-table.md" 2>/dev/null
  tar czf "$OUT/speed/$d.tgz" -C /tmp/jobs/$d --exclude='*.safetensors' --exclude='ckpt-*' --exclude='checkpoints' \
    --exclude='data' --exclude='unsloth_compiled_cache' . 2>/dev/null; done
finish
