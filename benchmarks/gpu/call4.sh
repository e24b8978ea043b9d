# Device call 4 (issue 22, 1B shape, a run like the issue's: ~1,367 training examples): with xformers and without,
# the train stage, bare Unsloth packing (2 x 4 and at the stage's 8 x 1) and the fixed-shape loop; then, as time
# allows, Unsloth's notebook defaults and the evaluate stage's base pass against its merged pass (generation.py).
# Run from .gpuwork: OUT=... bash benchmarks/gpu/call4.sh
. benchmarks/gpu/common.sh
MODEL=/tmp/m1b49 SHAPE=Llama-3.2-1B
begin 1570
build m1b49 $B1
job prep 200 "$SITE_X" $TS /tmp/m1b49 /tmp/jobs/bx --rows $ROWS --shape Llama-3.2-1B --setups "" $D &
# the fixed-shape loop needs no data: both passes while the data is prepared
( job fixed-x 150 "$SITE_X" $TS /tmp/m1b49 /tmp/jobs/fx --setups unsloth-fixed --skip-prepare
  job fixed-nox 150 "$SITE_NOX" $TS /tmp/m1b49 /tmp/jobs/fn --setups unsloth-fixed --skip-prepare ) &
wait
mkdir -p /tmp/jobs/bn && cp -r /tmp/jobs/bx/prepared /tmp/jobs/bx/meta.json /tmp/jobs/bx/bench.yaml /tmp/jobs/bn/
cp /tmp/jobs/fx/unsloth-fixed.json /tmp/jobs/bx/ 2>/dev/null; cp /tmp/jobs/fn/unsloth-fixed.json /tmp/jobs/bn/ 2>/dev/null
speed speed-x "$SITE_X" /tmp/jobs/bx project,unsloth-packing+unsloth-packing-mb8
speed speed-nox "$SITE_NOX" /tmp/jobs/bn project,unsloth-packing
[ "$(left)" -gt 80 ] && speed default-x "$SITE_X" /tmp/jobs/bx unsloth-default
[ "$(left)" -gt 70 ] && job gen $(( $(left) - 8 )) "$SITE_X" $PY "$W/benchmarks/generation.py" /tmp/jobs/bx/runs/project \
  --new-tokens 64 --prompts 64 --single-prompts 2 --batches 64 --paths merged-base merged
collect bx bn
finish
