# Sourced at the start of a device call, from .gpuwork (the worktree's copy): unpacks the site (with and without
# xformers), records the card and versions, and defines job() to run one part in its own folder under a timeout.
set -u
export HF_HUB_OFFLINE=1 UNSLOTH_DISABLE_STATISTICS=1 PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
W=$PWD
T0=$(date +%s)
BUDGET=${BUDGET:-560}  # seconds this call may use; left() says how many remain
left() { echo $(( BUDGET - ($(date +%s) - T0) )); }
rm -rf /tmp/jobs; mkdir -p "$OUT/logs" /tmp/jobs
PY=${PY:-python3}
B1="--hidden 2048 --layers 16 --heads 32 --kv-heads 8 --intermediate 8192"
B8="--hidden 4096 --layers 32 --heads 32 --kv-heads 8 --intermediate 14336"
if [ "${DRY:-0}" = 1 ]; then  # a CPU dry run of the whole call: tiny shapes, the local venv
  SITE_X=$W SITE_NOX=$W
  B1="--hidden 64 --layers 2 --heads 4 --kv-heads 2 --intermediate 128" B8="--hidden 128 --layers 2 --heads 4 --kv-heads 2 --intermediate 256"
else
  $PY -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" || { echo "no GPU: set DRY=1 for a CPU dry run"; exit 2; }
  tar xzf ../.gpu-site.tgz -C /tmp || exit 1
  cp -al /tmp/gpu-site /tmp/gpu-site-nox && rm -rf /tmp/gpu-site-nox/xformers /tmp/gpu-site-nox/xformers-*
  SITE_X="/tmp/gpu-site:$W" SITE_NOX="/tmp/gpu-site-nox:$W"
  # xformers 0.0.35's _C.so links the CUDA 12 runtime, which a torch built for CUDA 13 does not bring; its torch
  # symbols all resolve in torch 2.11 (checked with nm). The CUDA 12 runtime travels in ../.gpu-cu12 (carry it).
  [ -f ../.gpu-cu12/libcudart.so.12 ] && export LD_LIBRARY_PATH="$(cd ../.gpu-cu12 && pwd):${LD_LIBRARY_PATH:-}"
fi
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  PYTHONPATH=$SITE_X $PY -c "import torch, transformers, trl, importlib.metadata as m; print('torch', torch.__version__, 'transformers', transformers.__version__, 'trl', trl.__version__, 'unsloth', m.version('unsloth'), 'bitsandbytes', m.version('bitsandbytes'))"
  PYTHONPATH=$SITE_X $PY -c "import importlib.metadata as m; print('xformers', m.version('xformers'))"
  echo "LD_LIBRARY_PATH=${LD_LIBRARY_PATH:-}"
} > "$OUT/env.txt" 2>&1
# job NAME TIMEOUT SITE CMD...: runs CMD in /tmp/jobs/NAME (Unsloth writes its compiled cache in the working folder)
job() {
  local name=$1 limit=$2 site=$3; shift 3
  mkdir -p /tmp/jobs/$name
  ( cd /tmp/jobs/$name && echo "[$name] start $(( $(date +%s) - T0 )) s" && \
    PYTHONPATH=$site timeout "$limit" "$@"; echo "[$name] rc=$? at $(( $(date +%s) - T0 )) s" ) > "$OUT/logs/$name.log" 2>&1
  tail -1 "$OUT/logs/$name.log"
}
build() {  # build NAME ARGS...: a random-weight Llama body in bf16 on the GPU, SmolLM2's tokenizer
  local name=$1; shift
  job build-$name 150 "$SITE_X" $PY -m medqlora.testing /tmp/$name --tokenizer "$W/tok" --dtype bfloat16 \
    --max-positions 8192 "$@"
}
MEMB="$PY $W/benchmarks/memory_estimate.py"
TS="$PY $W/benchmarks/train_speed.py"
D="--medquad $W/data200/medquad_sample.jsonl --pubmedqa $W/data200/pubmedqa_pqal.jsonl"
begin() {  # begin ROWS: the call's rows of the mix (a few in a dry run) and the card and versions, in the call's log
  ROWS=${ROWS:-$1}
  [ "${DRY:-0}" = 1 ] && ROWS=60
  cat "$OUT/env.txt"
}
speed() {  # speed NAME SITE OUTDIR SETUPS: train_speed.py on $MODEL ($SHAPE), OUTDIR's prepared data, the time left
  job $1 $(( $(left) - 10 )) "$2" $TS $MODEL $3 --shape $SHAPE --gpus 0 --setups $4 --slow-steps 10 --skip-prepare $D
}
mix() {  # mix DIR: DIR/mix.jsonl ($ROWS rows) and DIR/bench.yaml on $MODEL, as train_speed.py writes them (no prep)
  job mix 60 "$SITE_X" $PY -c "
import sys; sys.path.insert(0, '$W/benchmarks'); from pathlib import Path; import train_speed as t
o = Path('$1'); o.mkdir(parents=True, exist_ok=True)
m = t.write_mix(o / 'mix.jsonl', $ROWS, Path('$W/data200/medquad_sample.jsonl'), Path('$W/data200/pubmedqa_pqal.jsonl'), Path('$W/data/medqa_train.jsonl'))
t.params_for('$MODEL', m, o, Path('$W/params/llama-3.1-8b-instruct.yaml'))"
}
collect() {  # collect NAME...: each /tmp/jobs/NAME speed folder's table and a tarball without weights, in $OUT/speed
  mkdir -p "$OUT/speed"
  for d in "$@"; do
    PYTHONPATH=$SITE_X $PY "$W/benchmarks/train_speed.py" --report /tmp/jobs/$d > /dev/null 2>&1
    cp /tmp/jobs/$d/table.md "$OUT/speed/table-$d.md" 2>/dev/null
    tar czf "$OUT/speed/$d.tgz" -C /tmp/jobs/$d --exclude='*.safetensors' --exclude='ckpt-*' --exclude='checkpoints' \
      --exclude='data' --exclude='unsloth_compiled_cache' --exclude='*.pt' --exclude='*.bin' . 2>/dev/null
  done
}
finish() {  # everything into at most 8 files under $OUT
  cat /tmp/jobs/*/rows.jsonl > "$OUT/rows.jsonl" 2>/dev/null
  tar czf "$OUT/logs.tgz" -C "$OUT" logs && rm -rf "$OUT/logs"
  echo "done at $(( $(date +%s) - T0 )) s"; ls -la "$OUT"
}
