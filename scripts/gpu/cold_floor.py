"""The floor under a cold `mhunet infer --device cuda` with the torch backend: what a fresh process pays
before it does any of our work, each step in its own new process and timed from outside.

    python scripts/gpu/cold_floor.py [--repeats 3] > cold_floor.md

Steps (each process does the steps above it too, so the differences are the step's own cost):
1. `python -c pass`: the interpreter;
2. `import torch`;
3. + a CUDA tensor: the CUDA context;
4. + one conv2d, one linear and one layer norm in fp16 on CUDA: cuDNN and cuBLAS handles and their
   first kernels, which the model's first batch needs;
5. + `import cupy, cupyx.scipy.ndimage`: the GPU pre/post-processing modules.
Issue #13 asks for a cold CLI <= 3 s; where step 4 alone is above that, no change in our code can meet it
with the torch backend on this machine.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time

#: Each process runs its step's code after all the code of the steps above it.
STEPS = (
    ("interpreter", "pass"),
    ("import torch", "import torch"),
    ("+ CUDA context", "torch.ones(1, device='cuda'); torch.cuda.synchronize()"),
    (
        "+ first conv, linear, layer norm (fp16)",
        "x = torch.randn(8, 16, 128, 128, device='cuda', dtype=torch.half);"
        "w = torch.randn(16, 16, 3, 3, device='cuda', dtype=torch.half);"
        "y = torch.nn.functional.conv2d(x, w, padding=1).flatten(2);"
        "z = torch.nn.functional.linear(y, torch.randn(64, 16384, device='cuda', dtype=torch.half));"
        "torch.nn.functional.layer_norm(z.float(), (64,)); torch.cuda.synchronize()",
    ),
    ("+ cupy and cupyx.scipy.ndimage", "import cupy, cupyx.scipy.ndimage; cupy.ones(1).sum()"),
)


def wall(code: str) -> float:
    """Seconds of one new process running ``code``; NaN when it fails (its error goes to stderr)."""
    t = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", code])
    return time.perf_counter() - t if done.returncode == 0 else float("nan")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    print(f"| step (new process each, median of {args.repeats}) | wall s |")
    print("| --- | ---: |")
    for k, (name, _) in enumerate(STEPS):
        code = "; ".join(c for _, c in STEPS[: k + 1])
        times = [wall(code) for _ in range(args.repeats)]
        print(f"| {name} | {statistics.median(times):.2f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
