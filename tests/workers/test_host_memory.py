"""Host memory reuse (`UNIPIC_WORKER_HOST_MEMORY_REUSE`): a worker's large CPU tensors reuse freed heap memory
instead of having the kernel map and zero fresh pages at every model call (`workers.device.host_memory`)."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.support import REPO

# In a fresh process (malloc's settings are per process and stay): start a worker's engine as the runtime does,
# then allocate and free a 64 MiB tensor (16,384 pages) a few times, as each decode's activations are, and count
# the minor page faults of the allocations after the first.
PROBE = """
import json, resource, sys
import torch
from storage.settings import load_settings
from workers.startup import load_ready_engine
load_ready_engine(load_settings(model="tiny", worker_host_memory_reuse=sys.argv[1] == "true"))
def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
torch.ones(16 << 20).sum()
before = faults()
for _ in range(4):
    torch.ones(16 << 20).sum()
print(json.dumps({"faults_per_call": (faults() - before) / 4}))
"""


def _faults_per_call(reuse: bool) -> float:
    out = subprocess.run([sys.executable, "-c", PROBE, "true" if reuse else "false"], cwd=REPO, capture_output=True,
                         text=True, check=True).stdout.splitlines()
    return float(json.loads(out[-1])["faults_per_call"])


def test_a_worker_reuses_freed_host_memory_for_the_next_calls_large_tensors() -> None:
    kept, default = _faults_per_call(True), _faults_per_call(False)
    assert default > 10_000  # glibc maps a 64 MiB block afresh for each call and unmaps it on free
    assert kept < 500  # the block comes back from the heap: its pages are mapped already
