#!/usr/bin/env bash
# Seed 000's table layout on one task: CE, DL (alpha = 1), DL (annealed alpha), hinge (annealed),
# each scored under greedy, hard beam (k=3) and soft beam decoding, from one CE checkpoint.
#   bash benchmarks/soft_beam_table.sh TASK CE_CHECKPOINT_DIR OUT_DIR EPOCHS COST
# Needs BEAMTUNE_DATA. Prints a markdown table; every run's metrics.json stays in OUT_DIR.
set -euo pipefail
task=$1 ce=$2 out=$3 epochs=$4 cost=${5:-hamming}
anneal="exp:1:100:$epochs"
mkdir -p "$out"
run() {  # name objective alpha
  [ -f "$out/$1/metrics.json" ] || beamtune train --task "$task" --objective "$2" --init "$ce" --beam-size 3 \
      --alpha "$3" --cost "$cost" --epochs "$epochs" --patience 0 --threads 1 --quiet --out "$out/$1" > "$out/$1.log" 2>&1
}
run dl_alpha1 dl 1
run dl_annealed dl "$anneal"
run hinge_annealed hinge "$anneal"
for split in dev test; do
  beamtune decode --checkpoint "$ce" --decoder soft-beam --alpha 1 --split $split --json --quiet > "$out/ce_soft_$split.json"
done
python3 - "$out" "$ce" <<'PY'
import json, sys
out, ce = sys.argv[1:]
rows = [("CE", f"{ce}/metrics.json"), ("DL, alpha = 1", f"{out}/dl_alpha1/metrics.json"),
        ("DL, annealed alpha", f"{out}/dl_annealed/metrics.json"), ("hinge, annealed alpha", f"{out}/hinge_annealed/metrics.json")]
print("| training | best epoch | dev greedy | dev beam3 | dev soft-beam3 | test greedy | test beam3 | test soft-beam3 |")
print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
for name, path in rows:
    m = json.load(open(path))
    cells = []
    for split in ("dev", "test"):
        soft = m[split].get("soft_beam3") or json.load(open(f"{out}/ce_soft_{split}.json"))
        cells += [m[split]["greedy"]["score"], m[split]["beam3"]["score"], soft["score"]]
    print(f"| {name} | {m['best_epoch']} | " + " | ".join(f"{100 * c:.2f}" for c in cells) + " |")
PY
