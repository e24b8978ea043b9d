# Device call (issue 31): the evaluate stage's generation before and after, with the R1 params as shipped
# (benchmarks/eval_speed.py), on the Llama-3.2-1B and Llama-3.1-8B shapes with Llama 3's 128,256-token vocabulary
# (untied), one process per shape, one after the other on the card:
#   1B  eval.merge path (dequantized, adapter merged; transformers generate): eager (before), static, continuous
#   8B  4-bit + adapter: static through transformers + PEFT + bitsandbytes (after), then eager through Unsloth's
#       inference mode (before; loaded last, its class patches stay in the process), 70 s kept for it
# The 8B body is built (mostly writing 16 GB to disk) while the 1B process runs; the 8B process imports and prepares
# meanwhile and loads its model once the 1B process is done (--wait-for). Sized for about 5.5 minutes of device
# time. Run from .gpuwork: OUT=... bash benchmarks/gpu/eval_speed.sh (DRY=1: tiny shapes on the CPU through the local
# venv; SHAPES=1b: the 1B shape alone, PROF1 its profile batch).
BUDGET=${BUDGET:-330}
. benchmarks/gpu/common.sh
begin 0
V="--vocab 128256 --untied"
NT=64 LONG=1024 PROF=16 LOADER=unsloth
if [ "${DRY:-0}" = 1 ]; then V="--vocab 60000 --untied"; NT=8 LONG=16 PROF=4 LOADER=hf; fi
E="$PY $W/benchmarks/eval_speed.py"
DL=$(( T0 + BUDGET - 12 ))
if [ "${SHAPES:-1b 8b}" = 1b ]; then  # the 1B shape alone (a short call): imports while its body is built
  ( build m1b $B1 $V; touch /tmp/jobs/m1b.built ) &
  job gen1b $(( BUDGET - 15 )) "$SITE_NOX" $E /tmp/m1b /tmp/jobs/gen1b --path merged --data "$W/data200" \
    --engines eager static continuous --batches planned 16 64 1 --batches-for static=planned continuous=planned \
    --new-tokens $NT --long $LONG --profile ${PROF1:-$PROF} --deadline $DL --model-ready /tmp/jobs/m1b.built \
    --min-left 8 --step-s 0.01
else
  build m1b $B1 $V
  ( build m8b $B8 $V; touch /tmp/jobs/m8b.built ) &
  # the 8B process: imports and prepares now, loads once the 1B process is done
  ( job gen8b $(( BUDGET - 25 )) "$SITE_NOX" $E /tmp/m8b /tmp/jobs/gen8b --path adapter --data "$W/data200" \
      --engines static eager --batches planned 1 64 16 --batches-for static=planned \
      --new-tokens $NT --long $LONG --profile $PROF --eager-loader $LOADER --reserve 70 --deadline $DL \
      --model-ready /tmp/jobs/m8b.built --wait-for /tmp/jobs/gen1b.done ) &
  job gen1b $(( BUDGET - 140 )) "$SITE_NOX" $E /tmp/m1b /tmp/jobs/gen1b --path merged --data "$W/data200" \
    --engines eager static continuous --batches planned 64 16 1 --batches-for static=planned,16 continuous=planned \
    --new-tokens $NT --long $LONG --profile $PROF --deadline $(( T0 + ${D1:-165} ))
  touch /tmp/jobs/gen1b.done
fi
wait
for s in gen1b gen8b; do
  grep -h -A40 "path, planned batch" "$OUT/logs/$s.log" 2>/dev/null
  grep -h -E "^(SETUP|LOAD|PROFROW|PROJROW|SKIPROW|AGREEROW)" "$OUT/logs/$s.log" 2>/dev/null | cut -c1-400
done
finish
