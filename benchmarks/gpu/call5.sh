# Device call 5 (issue 22, Llama-3.1-8B shape with Llama 3's 128,256 vocabulary, untied): with xformers, the train
# stage, bare Unsloth packing and the fixed-shape loop on one prepared mix; then, as time allows, the train stage
# without xformers. Run from .gpuwork: OUT=... bash benchmarks/gpu/call5.sh
. benchmarks/gpu/common.sh
MODEL=/tmp/m8b128 SHAPE=Llama-3.1-8B
begin 600
build m8b128 $B8 --vocab 128256 --untied
job prep 200 "$SITE_X" $TS /tmp/m8b128 /tmp/jobs/b8 --rows $ROWS --shape Llama-3.1-8B --setups "" $D &
job fixed-x 240 "$SITE_X" $TS /tmp/m8b128 /tmp/jobs/f8 --setups unsloth-fixed --skip-prepare &
wait
cp /tmp/jobs/f8/unsloth-fixed.json /tmp/jobs/b8/ 2>/dev/null
mkdir -p /tmp/jobs/b8n && cp -r /tmp/jobs/b8/prepared /tmp/jobs/b8/meta.json /tmp/jobs/b8/bench.yaml /tmp/jobs/b8n/
speed speed-x "$SITE_X" /tmp/jobs/b8 project,unsloth-packing
[ "$(left)" -gt 150 ] && speed speed-nox "$SITE_NOX" /tmp/jobs/b8n project
collect b8 b8n
finish
