#!/usr/bin/env bash
# A training pipeline around scconv: plan (dry run, JSON), check the plan, convert, fine-tune,
# verify. Each step reads the previous one's JSON or exit code.
#
#   bash examples/pipeline.sh                 # resnet50, 10 steps on synthetic data, 1 process
#   MODEL=resnet18 STEPS=50 NPROC=2 bash examples/pipeline.sh
#
# It uses the scconv of an active virtualenv, else the repository's .venv (README, "Quick start").
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
if [ -z "${VIRTUAL_ENV:-}" ] && [ -x "$ROOT/.venv/bin/scconv" ]; then
    PATH="$ROOT/.venv/bin:$PATH"  # scconv, python and torchrun of the repository's virtualenv
fi
if ! command -v scconv >/dev/null 2>&1; then
    echo "pipeline.sh: 'scconv' not found: install the project into .venv (README, 'Quick start') or activate" \
         "the virtualenv it is installed in (source .venv/bin/activate)" >&2
    exit 127
fi
MODEL=${MODEL:-resnet50}
STEPS=${STEPS:-10}
NPROC=${NPROC:-1}
WORK=${WORK:-scconv-pipeline}
PYTHON=${PYTHON:-python}
mkdir -p "$WORK"

# 1. dry run: one JSON document on stdout, progress on stderr
scconv convert "$MODEL" --dry-run --json > "$WORK/plan.json"

# 2. check the plan before spending compute: something replaced, fewer parameters and MACs
"$PYTHON" - "$WORK/plan.json" <<'PY'
import json, sys
doc = json.load(open(sys.argv[1]))
plan, counts = doc["plan"], doc["counts"]
assert plan["replaced"] > 0, "nothing would be replaced"
assert counts["params_delta"] < 0 and counts["macs_delta"] < 0, "the conversion would not shrink the model"
print(f"plan: {plan['replaced']} of {plan['convs']} convs replaced; params {counts['params_delta_percent']:+.1f}%, "
      f"MACs {counts['macs_delta_percent']:+.1f}% at {'x'.join(map(str, counts['input_size']))}")
PY

# 3. convert for real (same rules and seed: the same replacements as the dry run)
scconv convert "$MODEL" --out "$WORK/model.pt" --force --json > "$WORK/convert.json"   # --force: rerunnable

# 4. fine-tune (torchrun + DDP; gloo on CPU, NCCL on GPUs), then verify the result
"$PYTHON" -m torch.distributed.run --standalone --nproc_per_node="$NPROC" "$ROOT/examples/finetune.py" "$WORK/model.pt" \
    --steps "$STEPS" --batch-size 8 --log-every 5 --out "$WORK/finetuned.pt" --force
scconv verify "$WORK/finetuned.pt"
ls -l "$WORK"
