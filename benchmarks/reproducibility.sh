#!/usr/bin/env bash
# Same seed, same commands, twice: are the weights identical? The default bundle's two training commands
# (weights/train_default.sh) shortened to a few steps each, run twice from scratch, then compared
# tensor by tensor. Prints "identical" or the tensors that differ.
set -euo pipefail
WORK=${WORK:-/tmp/magnet-repro}
rm -rf "$WORK"
for run in a b; do
    magnet train-segmenter synth:1000:24:4096 -o "$WORK/$run/segmenter" --val synth:5000:2:4096 \
        --epochs 2 --steps 10 --batch-size 16 --lr 0.001 --seed 0 --no-progress > /dev/null
    magnet train-refiner synth:1000:24:4096 --model "$WORK/$run/segmenter" -o "$WORK/$run/bundle" --val synth:5000:2:4096 \
        --epochs 2 --steps 10 --batch-size 8 --crop 128 --lr 0.01 --seed 0 --no-progress > /dev/null
done
python - "$WORK" <<'PY'
import sys, torch
work = sys.argv[1]
differ = []
for name in ("segmenter.pt", "refiner.pt"):
    a = torch.load(f"{work}/a/bundle/{name}", map_location="cpu", weights_only=True)
    b = torch.load(f"{work}/b/bundle/{name}", map_location="cpu", weights_only=True)
    a, b = (x.get("state_dict", x) if isinstance(x, dict) else x for x in (a, b))
    differ += [f"{name}:{k}" for k in a if not torch.equal(a[k], b[k])]
print("identical" if not differ else "differ: " + ", ".join(differ))
PY
