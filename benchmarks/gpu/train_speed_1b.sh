# The train stage's speed on the Llama-3.2-1B shape (was call7.sh; it replaces call3/4/6.sh, which measured the
# same setups one call at a time: git show 3fd6b24:benchmarks/gpu/call4.sh) (issue 22, 1B shape, ~1,367 training examples as in the run): every setup with and without
# xformers in one call. One card, shared through a lock: the project runs hold it for their whole runner.py, bare
# setups (train_speed.py --gpu-lock) only to load and train, so each trains alone while the others import. The
# project's run with xformers is a user's chain (setup, preprocess, train: its train kernel starts during setup);
# runner.py is profiled. Run from .gpuwork: OUT=... bash benchmarks/gpu/train_speed_1b.sh
# PROBE=1 also times `import unsloth` cold and warm and checks that xformers' block-diagonal kernel runs (call3.sh's probe).
. benchmarks/gpu/common.sh
MODEL=/tmp/m1b49 SHAPE=Llama-3.2-1B
begin 1570
L=/tmp/gpu.lock
if [ "${PROBE:-0}" = 1 ]; then
  job imp-cold 120 "$SITE_X" $PY -X importtime -c "import unsloth" && job imp-warm 120 "$SITE_X" $PY -X importtime -c "import unsloth"
  job xprobe 120 "$SITE_X" $PY -c "
import torch, unsloth
from medqlora.training.attention import attention_path, describe
p = attention_path(); print(p); print(describe(p))
if p['packed'] == 'xformers':
    from xformers.ops import fmha, memory_efficient_attention
    q = torch.randn(1, 64, 8, 64, device='cuda', dtype=torch.bfloat16)
    o = memory_efficient_attention(q, q, q, attn_bias=fmha.attn_bias.BlockDiagonalCausalMask.from_seqlens([20, 44]))
    torch.cuda.synchronize(); print('XFORMERS_OK', tuple(o.shape))
"
fi
build m1b49 $B1
lspeed() {  # lspeed NAME SITE OUTDIR SETUPS [FLAGS]: speed() with the card's lock, once OUTDIR's data is prepared
  local n=$1 site=$2 dir=$3 setups=$4; shift 4
  while [ ! -f $dir/meta.json ] && [ "$(left)" -gt 20 ]; do sleep 2; done
  job $n $(( $(left) - 8 )) "$site" $TS $MODEL $dir --shape $SHAPE --gpus 0 --setups $setups --slow-steps 10 \
    --skip-prepare --gpu-lock $L "$@" $D
}
# the mix's bench.yaml, for the chain (the chain prepares its own copy of the data)
mix /tmp/jobs/bx
( exec 9>>$L
  flock 9; job speed-x $(( $(left) - 8 )) "$SITE_X" $TS $MODEL /tmp/jobs/bx --shape $SHAPE --gpus 0 --setups project \
    --skip-prepare --chain $D; flock -u 9
  flock 9; lspeed speed-nox "$SITE_NOX" /tmp/jobs/bn project; flock -u 9 ) &
sleep 2
( job prep 200 "$SITE_X" $TS $MODEL /tmp/jobs/bp --rows $ROWS --shape $SHAPE --setups "" $D
  mkdir -p /tmp/jobs/bn && cp -r /tmp/jobs/bp/prepared /tmp/jobs/bp/meta.json /tmp/jobs/bp/bench.yaml /tmp/jobs/bn/
  cp -r /tmp/jobs/bp/prepared /tmp/jobs/bp/meta.json /tmp/jobs/bx/ ) &
job fixed-x 200 "$SITE_X" $TS $MODEL /tmp/jobs/fx --setups unsloth-fixed --skip-prepare --gpu-lock $L &
lspeed bare-x "$SITE_X" /tmp/jobs/bx unsloth-packing+unsloth-packing-mb8+unsloth-default &
lspeed bare-nox "$SITE_NOX" /tmp/jobs/bn unsloth-packing+unsloth-packing-mb8 &
sleep 20
lspeed hf "$SITE_NOX" /tmp/jobs/bn hf &
wait
cp /tmp/jobs/fx/unsloth-fixed.json /tmp/jobs/bx/ 2>/dev/null; cp /tmp/jobs/fx/unsloth-fixed.json /tmp/jobs/bn/ 2>/dev/null
collect bx bn
finish
