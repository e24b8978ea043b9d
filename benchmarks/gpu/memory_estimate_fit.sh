# The memory estimate's fit (was call1.sh; issue 17 point 9: memory: both vocabularies, r 16 and 64, packed/unpacked, with/without xformers)
# and issue 18's GPU chain (all five stages, 1B body, 200 rows). Run from .gpuwork: OUT=... bash benchmarks/gpu/memory_estimate_fit.sh
# (DRY=1 PY=.venv/bin/python: the same on a CPU with tiny shapes and one small config a job).
. benchmarks/gpu/common.sh
S="512x16 1024x8 2048x4 4096x2 8192x1 512x8 1024x4 2048x2 4096x1 1024x2 2048x1 1024x16"
S8="1024x8 2048x2 2048x4 4096x2 512x16 1024x4"
SX="512x16 1024x8 2048x4 4096x2 8192x1 1024x16"
SU="512x16 1024x8 4096x2 2048x2"
SH="1536x4 3072x2 768x8 640x12"  # held out of the fit: r 32, lengths between the fitted ones
S8H="1024x8 2048x2 768x4"
[ "${DRY:-0}" = 1 ] && S="64x2" S8="64x2" SX="64x2" SU="64x2" SH="64x2" S8H="64x2"
cat "$OUT/env.txt"
build m1b49 $B1 & build m1b128 $B1 --vocab 128256 & build m8b128 $B8 --vocab 128256 --untied & wait
job chain 400 "$SITE_X" $PY "$W/runner.py" "$W/params/llama-3.1-8b-instruct.yaml" --set model.name_or_path=/tmp/m1b49 \
  --set data.source="$W/data200/medquad300.jsonl" --set data.max_samples=200 --set eval.max_samples=16 \
  --set eval.max_new_tokens=64 "--set" "eval.sets=[]" --set train.max_steps=30 --set train.save_steps=null \
  --set run_name=chain-1b --reports-dir /tmp/jobs/chain/reports &
for r in 16 64; do
  job mem-1b49-r$r 390 "$SITE_X" $MEMB /tmp/m1b49 $S --r $r --tag xformers --profile 1024x8 --jsonl rows.jsonl &
  job mem-1b128-r$r 390 "$SITE_X" $MEMB /tmp/m1b128 $S --r $r --tag xformers --profile 1024x8 4096x2 --jsonl rows.jsonl &
done
job mem-8b128 390 "$SITE_X" $MEMB /tmp/m8b128 $S8 --r 16 --tag xformers --profile 1024x8 --jsonl rows.jsonl &
job mem-1b128-nox 390 "$SITE_NOX" $MEMB /tmp/m1b128 $SX --r 64 --tag no-xformers --jsonl rows.jsonl &
job mem-1b128-unpacked 390 "$SITE_X" $MEMB /tmp/m1b128 $SU --r 64 --packing false --tag xformers --jsonl rows.jsonl &
job mem-1b128-unpacked-nox 390 "$SITE_NOX" $MEMB /tmp/m1b128 $SU --r 64 --packing false --tag no-xformers \
  --jsonl rows.jsonl &
job mem-1b128-r32 390 "$SITE_X" $MEMB /tmp/m1b128 $SH --r 32 --tag holdout --jsonl rows.jsonl &
job mem-1b49-r32 390 "$SITE_X" $MEMB /tmp/m1b49 $SH --r 32 --tag holdout --jsonl rows.jsonl &
job mem-8b128-r64 390 "$SITE_X" $MEMB /tmp/m8b128 $S8H --r 64 --tag holdout --jsonl rows.jsonl &
wait
tar czf "$OUT/chain.tgz" -C /tmp/jobs/chain --exclude='*.safetensors' --exclude='*.gguf' --exclude='checkpoints' \
  --exclude='unsloth_compiled_cache' --exclude='*.bin' --exclude='*.pt' . 2>/dev/null
finish
