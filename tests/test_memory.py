"""core/memory.py: freed large blocks stay mapped, so a step's big tensors stop page-faulting."""

import os
import platform
import subprocess
import sys

import pytest

from alignkit.core.memory import user_chose_allocator

PROBE = r"""
import resource, torch
from alignkit.core.memory import retain_freed_memory
print(retain_freed_memory())
torch.manual_seed(0)
head = torch.nn.Linear(576, 49152, bias=False)  # SmolLM2's LM head
hidden = torch.randn(341, 576)

def step():  # a chunk of logits (64 MiB fp32) and the head's gradient (113 MiB): fresh large blocks every step
    torch.logsumexp(head(hidden), -1).sum().backward()
    head.weight.grad = None

step(); step(); step()  # the heap grows to the step's size in the first steps
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(8):
    step()
print((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 8)
"""


def probe(extra_env: dict[str, str]) -> tuple[str, float]:
    env = {k: v for k, v in os.environ.items() if k not in ("ALIGNKIT_SYSTEM_MALLOC", "MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")}
    out = subprocess.run([sys.executable, "-c", PROBE], env={**env, **extra_env}, capture_output=True, text=True, check=True).stdout.split()
    return out[0], float(out[1])


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc's mallopt")
def test_large_blocks_are_reused_instead_of_refaulted():
    pages = (341 + 576) * 49152 * 4 / 4096  # the logits and the gradient, in 4 KiB pages
    chosen, faults_system = probe({"ALIGNKIT_SYSTEM_MALLOC": "1"})
    assert chosen == "False"
    assert faults_system > 0.9 * pages  # glibc's default: mmap on alloc, munmap on free, every page faults again
    chosen, faults_kept = probe({})
    assert chosen == "True"
    assert faults_kept < 0.25 * pages and faults_kept < faults_system / 5  # measured: about 5.5k vs 110k a step


def test_the_users_allocator_choice_wins():
    assert user_chose_allocator({"LD_PRELOAD": "/usr/lib/x86_64-linux-gnu/libjemalloc.so.2"})
    assert user_chose_allocator({"MALLOC_MMAP_THRESHOLD_": "65536"})
    assert user_chose_allocator({"GLIBC_TUNABLES": "glibc.malloc.trim_threshold=1"})
    assert user_chose_allocator({"ALIGNKIT_SYSTEM_MALLOC": "1"})
    assert not user_chose_allocator({"ALIGNKIT_SYSTEM_MALLOC": "0", "LD_PRELOAD": ""})
    assert not user_chose_allocator({})
