"""dsfnet.runtime: glibc keeps freed buffers, so a training loop stops page-faulting on every layer."""

import resource
import subprocess
import sys
import textwrap

from tests.project import PROJECT_ROOT

LOOP = textwrap.dedent("""
    import resource, sys
    import torch
    torch.set_num_threads(1)
    if sys.argv[1] == "keep":
        from dsfnet.runtime import keep_freed_memory
        assert keep_freed_memory() and keep_freed_memory()  # applied once, then remembered
    layer = torch.nn.Conv2d(16, 64, 3, padding=1)
    x = torch.randn(32, 16, 128, 64)  # a 64 MiB activation: above every threshold glibc picks by itself
    for _ in range(5):  # warm-up: the heap grows to what a batch needs (first-touch faults in either case)
        layer(x).relu().sum().backward()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(10):
        layer(x).relu().sum().backward()
    print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
""")


def minor_faults(mode: str) -> int:
    done = subprocess.run([sys.executable, "-c", LOOP, mode], cwd=PROJECT_ROOT, capture_output=True, text=True,
                          check=True)
    return int(done.stdout.split()[-1])


def test_kept_memory_removes_the_page_faults_of_repeated_batches():
    assert sys.platform.startswith("linux") and resource.getrusage(resource.RUSAGE_SELF).ru_minflt > 0
    plain, kept = minor_faults("plain"), minor_faults("keep")
    # without it each 64 MiB buffer is mmapped and zero-filled again per batch: 16k faults a buffer
    assert plain > 100_000 and kept < plain / 20, (plain, kept)
