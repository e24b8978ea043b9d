# Device call 3 (issue 22, 1B shape): xformers 0.0.35 made loadable (the CUDA 12 runtime beside torch 2.11+cu130),
# the import of Unsloth cold and warm, then the train stage, bare Unsloth packing and the fixed-shape loop with
# xformers and without, and, as time allows, the train stage of the previous commit (316e40b: the packing check
# through the compiled path) on the same data. Run from .gpuwork (old/ holds 316e40b): OUT=... bash benchmarks/gpu/call3.sh
. benchmarks/gpu/common.sh
MODEL=/tmp/m1b49 SHAPE=Llama-3.2-1B
begin 600
job imp-cold 120 "$SITE_X" $PY -X importtime -c "import unsloth" &
build m1b49 $B1
wait
job imp-warm 120 "$SITE_X" $PY -X importtime -c "import unsloth" &
job xprobe 120 "$SITE_X" $PY -c "
import torch, unsloth
from medqlora.training.attention import attention_path, describe
p = attention_path(); print(p); print(describe(p))
if p['packed'] == 'xformers':
    from xformers.ops import fmha, memory_efficient_attention
    q = torch.randn(1, 64, 8, 64, device='cuda', dtype=torch.bfloat16)
    o = memory_efficient_attention(q, q, q, attn_bias=fmha.attn_bias.BlockDiagonalCausalMask.from_seqlens([20, 44]))
    torch.cuda.synchronize(); print('XFORMERS_OK', tuple(o.shape))
" &
job prep 170 "$SITE_X" $TS /tmp/m1b49 /tmp/jobs/bx --rows $ROWS --shape Llama-3.2-1B --setups "" $D &
wait
mkdir -p /tmp/jobs/bn && cp -r /tmp/jobs/bx/prepared /tmp/jobs/bx/meta.json /tmp/jobs/bx/bench.yaml /tmp/jobs/bn/
if grep -q XFORMERS_OK "$OUT/logs/xprobe.log"; then
  speed speed-x "$SITE_X" /tmp/jobs/bx project,unsloth-packing+unsloth-fixed
else
  echo "xformers did not load: one pass (the without-xformers one)"
fi
speed speed-nox "$SITE_NOX" /tmp/jobs/bn project,unsloth-packing+unsloth-fixed
if [ "$(left)" -gt 120 ]; then  # the previous commit's train stage, same data, with xformers where it loads
  mkdir -p /tmp/jobs/old/runs && cp -r /tmp/jobs/bx/prepared /tmp/jobs/old/runs/project-old
  OLD=/tmp/gpu-site:$W/old; [ "${DRY:-0}" = 1 ] && OLD=$W/old
  job old $(( $(left) - 15 )) "$OLD" $PY "$W/old/runner.py" --reports-dir /tmp/jobs/old/runs \
    --resume project-old --stages train
  job old-parts 20 "$SITE_X" $PY "$W/benchmarks/speed_parts.py" /tmp/jobs/old/runs/project-old
fi
collect bx bn
finish
