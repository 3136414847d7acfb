"""mhunet-deploy: Mamba-HUNet MS-lesion segmentation from training to a verified TensorRT engine."""

import os

__version__ = "0.1.0"

# Idle OpenMP workers (torch's CPU threads) sleep instead of spinning. A spinning worker takes a core
# from the other thread of the same pass, and on a shared machine from everyone: CPU forward passes on
# 2 threads of the 2-core VM ran 2.6x faster with it (BENCHMARKS.md, section 17). OpenMP reads it once,
# when torch loads it, so it is set here, before any module of ours imports torch; a value the user
# set is kept.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
