# The train stage's speed on the Llama-3.1-8B shape (was call8.sh; it replaces call5.sh, which measured fewer setups)
# (issue 22, Llama-3.1-8B shape with Llama 3's 128,256 vocabulary, untied): every setup with and
# without xformers in one call, the train stage alone on the prepared data (the 1B call runs the user's chain). One
# card, shared through a lock as in train_speed_1b.sh. Run from .gpuwork: OUT=... bash benchmarks/gpu/train_speed_8b.sh
. benchmarks/gpu/common.sh
MODEL=/tmp/m8b128 SHAPE=Llama-3.1-8B
begin 450
L=/tmp/gpu.lock
build m8b128 $B8 --vocab 128256 --untied
lspeed() {  # lspeed NAME SITE OUTDIR SETUPS [FLAGS]: speed() with the card's lock, once OUTDIR's data is prepared
  local n=$1 site=$2 dir=$3 setups=$4; shift 4
  while [ ! -f $dir/meta.json ] && [ "$(left)" -gt 20 ]; do sleep 2; done
  job $n $(( $(left) - 8 )) "$site" $TS $MODEL $dir --shape $SHAPE --gpus 0 --setups $setups --slow-steps 10 \
    --skip-prepare --gpu-lock $L "$@" $D
}
( job prep 200 "$SITE_X" $TS $MODEL /tmp/jobs/bp --rows $ROWS --shape $SHAPE --setups "" $D
  for d in b8 b8n; do mkdir -p /tmp/jobs/$d && cp -r /tmp/jobs/bp/prepared /tmp/jobs/bp/meta.json /tmp/jobs/bp/bench.yaml /tmp/jobs/$d/; done ) &
( exec 9>>$L
  while [ ! -f /tmp/jobs/b8/meta.json ] && [ "$(left)" -gt 20 ]; do sleep 2; done
  flock 9; lspeed speed-x "$SITE_X" /tmp/jobs/b8 project; flock -u 9
  flock 9; lspeed speed-nox "$SITE_NOX" /tmp/jobs/b8n project; flock -u 9 ) &
job fixed-x 240 "$SITE_X" $TS $MODEL /tmp/jobs/fx --setups unsloth-fixed --skip-prepare --gpu-lock $L &
sleep 10
lspeed bare-x "$SITE_X" /tmp/jobs/b8 unsloth-packing+unsloth-packing-mb8 &
lspeed bare-nox "$SITE_NOX" /tmp/jobs/b8n unsloth-packing &
sleep 30  # the least needed last (measured before, 2026-11-27); cut off by the call's time if it ends first
lspeed default-x "$SITE_X" /tmp/jobs/b8 unsloth-default &
lspeed hf "$SITE_NOX" /tmp/jobs/b8n hf &
wait
cp /tmp/jobs/fx/unsloth-fixed.json /tmp/jobs/b8/ 2>/dev/null; cp /tmp/jobs/fx/unsloth-fixed.json /tmp/jobs/b8n/ 2>/dev/null
collect b8 b8n
finish
