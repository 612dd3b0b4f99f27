#!/usr/bin/env bash
# The GPU path end to end, in minutes: scoring at 224 px on CUDA (wall, peak GPU memory, the
# ranking against the CPU's), then compress with fine-tuning on CUDA in one process and under
# torchrun (DDP over every GPU here), printing fine-tuning images per second for each.
#
#     bash benchmarks/gpu_check.sh [OUT_DIR]      # from the repository root, on a GPU machine
#
# Everything it prints is also in OUT_DIR/gpu_check.json (default: gpu-check/).
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-gpu-check}"
mkdir -p "$out"
python -c "import edgeprune" 2>/dev/null || pip install -q -e .
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
gpus=$(python -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; print(torch.cuda.device_count())")

python - "$out" <<'EOF'
import json, sys, time
from pathlib import Path

import torch
from scipy.stats import spearmanr

from edgeprune import accelerator
from edgeprune.jobs.loading import load_reference
from edgeprune.jobs.score import score_loaded

out = Path(sys.argv[1])
ref = load_reference("torchvision:mobilenet_v2", samples=256, dataset="synthetic",
                     input_size="3x224x224")
figures = {"gpu": torch.cuda.get_device_name(0), "torch": torch.__version__, "score": {}}
for criterion in ("lrp", "taylor", "fmcluster"):
    row = {}
    for where in ("cuda", "cpu"):
        accelerator.use(where)
        torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        result = score_loaded(ref, criterion)
        row[where] = {"wall_s": round(time.perf_counter() - t0, 2), "scores": result.scores}
        if where == "cuda":
            row["peak_gpu_gb"] = round(torch.cuda.max_memory_allocated() / 1e9, 2)
    a = torch.cat([v.flatten() for v in row["cuda"]["scores"].values()])
    b = torch.cat([v.flatten() for v in row["cpu"]["scores"].values()])
    figures["score"][criterion] = {
        "cuda_wall_s": row["cuda"]["wall_s"], "cpu_wall_s": row["cpu"]["wall_s"],
        "peak_gpu_gb": row["peak_gpu_gb"],
        "spearman_cuda_vs_cpu": round(float(spearmanr(a.numpy(), b.numpy()).statistic), 5)}
    print(criterion, figures["score"][criterion], flush=True)
(out / "score.json").write_text(json.dumps(figures, indent=1))
EOF

args=(compress --model torchvision:resnet18 --dataset synthetic --input-size 3x64x64
      --criterion l1 --epochs 3 --batch-size 256 --precision fp32 --bench-runs 3
      --bench-seconds 0 --bench-rounds 2 --accelerator cuda --quiet --overwrite)
edgeprune "${args[@]}" --out "$out/one"
torchrun --standalone --nproc-per-node "$gpus" -m edgeprune "${args[@]}" --out "$out/ddp"

python - "$out" "$gpus" <<'EOF'
import json, sys
from pathlib import Path

out, gpus = Path(sys.argv[1]), int(sys.argv[2])
figures = json.loads((out / "score.json").read_text())
for name in ("one", "ddp"):
    stage = json.loads((out / name / "manifest.json").read_text())["stages"]["finetune"]
    summary = json.loads((out / name / "summary.json").read_text())
    figures[f"finetune_{name}"] = {"processes": stage["processes"],
                                   "images_per_s": round(stage["images_per_s"], 1),
                                   "pruned_top1": summary["pruned"]["accuracy"]}
    print(name, figures[f"finetune_{name}"])
(out / "gpu_check.json").write_text(json.dumps(figures, indent=1))
print(f"wrote {out / 'gpu_check.json'}")
EOF
