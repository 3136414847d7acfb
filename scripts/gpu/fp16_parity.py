"""Which part of the torch fp16 path departs from fp32: autocast alone, or our CUDA scan kernel?

Runs patient26 slices through the packaged weights four ways (fp32/fp16 autocast x chunked/cuda scan)
and prints NaN counts and max |logit - fp32 chunked| per variant. Run on a GPU machine from the repo
root: python3 scripts/gpu/fp16_parity.py shared/data/open_ms/patient26/FLAIR.nii.gz
"""

import sys

import numpy as np
import torch

from mhunet_deploy.checkpoint import load_checkpoint
from mhunet_deploy.io.nifti import load_volume
from mhunet_deploy.ops.selective_scan.cuda import register_cuda_scan
from mhunet_deploy.ops.selective_scan.torch_scan import use_scan_impl
from mhunet_deploy.preprocess import prepare

slices, _ = prepare(load_volume(sys.argv[1]))
x = torch.from_numpy(slices[60:124]).cuda()
model, _ = load_checkpoint(device="cuda")
register_cuda_scan()
out = {}
with torch.inference_mode():
    for scan in ("chunked", "cuda"):
        for prec in ("fp32", "fp16"):
            with use_scan_impl(scan), torch.autocast("cuda", torch.float16, enabled=prec == "fp16"):
                out[scan, prec] = torch.cat([model(x[i : i + 16]).float() for i in range(0, len(x), 16)])
ref = out["chunked", "fp32"]
for key, y in out.items():
    nan = int(torch.isnan(y).sum())
    diff = (y - ref).abs().nan_to_num(float("inf"))
    agree = float(((y > 0) == (ref > 0)).float().mean())
    print(
        f"{key[0]:8s} {key[1]}: NaN {nan:8d}  max|d| {float(diff.max()):.4g}  "
        f"median|d| {float(diff.median()):.4g}  sign agreement {agree:.5f}"
    )
print("logit range fp32:", float(ref.min()), float(ref.max()), np.float32(0))
