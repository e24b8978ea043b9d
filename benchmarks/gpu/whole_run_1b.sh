# A user's whole run on the GPU (was call9.sh; issue 22): a user's whole run on the 1B shape, ~1,367 MedQuAD-mix examples, all five stages with
# the 8B params file's settings (the train kernel started during setup), then the evaluate stage's first batch
# against the rest, base and merged passes (generation.py), as time allows. Run from .gpuwork: OUT=... bash benchmarks/gpu/whole_run_1b.sh
. benchmarks/gpu/common.sh
MODEL=/tmp/m1b49 SHAPE=Llama-3.2-1B
begin 1570
build m1b49 $B1
mix /tmp/jobs/chain
job chain $(( $(left) - 100 )) "$SITE_X" $PY "$W/runner.py" /tmp/jobs/chain/bench.yaml --run-id chain \
  --reports-dir /tmp/jobs/chain/reports --set eval.max_samples=64 --set eval.max_new_tokens=64 \
  "--set" "eval.sets=[{name: yesno, source: $W/data/yesno_bench.jsonl, format: pubmedqa, max_items: 30}]"
PYTHONPATH=$SITE_X $PY "$W/benchmarks/speed_parts.py" /tmp/jobs/chain/reports/chain > "$OUT/chain-parts.json" 2>&1
[ "$(left)" -gt 60 ] && job gen $(( $(left) - 8 )) "$SITE_X" $PY "$W/benchmarks/generation.py" /tmp/jobs/chain/reports/chain \
  --new-tokens 64 --prompts 64 --single-prompts 2 --batches 64 --paths merged-base merged
tar czf "$OUT/chain.tgz" -C /tmp/jobs/chain --exclude='*.safetensors' --exclude='*.gguf' --exclude='checkpoints' \
  --exclude='unsloth_compiled_cache' --exclude='*.bin' --exclude='*.pt' --exclude='data' . 2>/dev/null
cat /tmp/jobs/chain/reports/chain/summary.md > "$OUT/summary.md" 2>/dev/null
finish
