# What the evaluate stage's first batch pays once (was call10.sh; issue 22). A short run of the 1B shape (2 steps),
# then the base pass of eval.merge at batch 1 and 64 in two processes: as the stage runs it, and with torch.compile
# off (force_eager), each row with the compiled graphs so far. Run from .gpuwork: OUT=... bash benchmarks/gpu/eval_first_batch.sh
. benchmarks/gpu/common.sh
MODEL=/tmp/m1b49 SHAPE=Llama-3.2-1B
begin 300
build m1b49 $B1
mix /tmp/jobs/short
job short 150 "$SITE_X" $PY "$W/runner.py" /tmp/jobs/short/bench.yaml --run-id short --reports-dir /tmp/jobs/short/reports \
  --stages setup,preprocess,train --set train.max_steps=2 --set data.val_fraction=0
for mode in compiled eager; do
  [ "$(left)" -gt 40 ] && job gen-$mode $(( $(left) - 5 )) "$SITE_X" $PY "$W/benchmarks/generation.py" \
    /tmp/jobs/short/reports/short --new-tokens 64 --prompts 64 --single-prompts 2 --batches 64 --paths merged-base \
    $([ $mode = eager ] && echo --eager)
done
grep -h GENROW $OUT/logs/gen-*.log > "$OUT/genrows.txt" 2>/dev/null
finish
