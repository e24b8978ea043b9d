# Device call 6 (issue 22, what calls 3-5 left): the 1B shape without xformers, side by side in one call (the train
# stage, bare packing at 2 x 4 and at 8 x 1, the fixed-shape loop) on ~1,367 examples, then Unsloth's notebook
# defaults with xformers and the evaluate stage's base pass against its merged pass, as time allows.
# Run from .gpuwork: OUT=... bash benchmarks/gpu/call6.sh
. benchmarks/gpu/common.sh
MODEL=/tmp/m1b49 SHAPE=Llama-3.2-1B
begin 1570
build m1b49 $B1
job prep 200 "$SITE_NOX" $TS /tmp/m1b49 /tmp/jobs/bn --rows $ROWS --shape Llama-3.2-1B --setups "" $D &
job fixed-nox 150 "$SITE_NOX" $TS /tmp/m1b49 /tmp/jobs/fn --setups unsloth-fixed --skip-prepare &
wait
cp /tmp/jobs/fn/unsloth-fixed.json /tmp/jobs/bn/ 2>/dev/null
mkdir -p /tmp/jobs/bx && cp -r /tmp/jobs/bn/prepared /tmp/jobs/bn/meta.json /tmp/jobs/bn/bench.yaml /tmp/jobs/bx/
speed speed-nox "$SITE_NOX" /tmp/jobs/bn unsloth-packing+unsloth-packing-mb8,project
[ "$(left)" -gt 80 ] && speed default-x "$SITE_X" /tmp/jobs/bx unsloth-default
[ "$(left)" -gt 70 ] && job gen $(( $(left) - 8 )) "$SITE_X" $PY "$W/benchmarks/generation.py" /tmp/jobs/bn/runs/project \
  --new-tokens 64 --prompts 64 --single-prompts 2 --batches 64 --paths merged-base merged
collect bn bx
finish
