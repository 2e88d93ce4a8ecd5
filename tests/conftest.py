"""Test-wide settings: one CPU thread per process.

The models under test are tiny, so intra-op threads buy nothing, and an oversubscribed OpenMP
pool (tests beside a training run on 2 cores) slows backward passes by ~100x. CLI tests start
subprocesses, which inherit OMP_NUM_THREADS.
"""
import os

os.environ["OMP_NUM_THREADS"] = "1"

import torch  # noqa: E402

torch.set_num_threads(1)
