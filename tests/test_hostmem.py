import subprocess
import sys

import pytest

from recycling import hostmem

# Free a 16 MiB block (glibc then raises its mmap threshold to that size), then allocate twenty 8 MiB
# tensors and free all but the last: by default they came from the heap, whose free space below the
# live block stays resident; with the fixed threshold each was its own mapping, returned when freed.
PROBE = """
import sys, torch
from recycling import hostmem
if sys.argv[1] == "fixed":
    assert hostmem.return_freed_memory()
rss = lambda: int(open("/proc/self/statm").read().split()[1]) * 4096
big = torch.ones(16 * 2**20 // 4); del big
before = rss()
blocks = [torch.ones(8 * 2**20 // 4) for _ in range(20)]
last = blocks.pop(); del blocks
print((rss() - before) // 2**20)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux") or hostmem._libc() is None, reason="glibc only")
def test_freed_tensor_memory_goes_back_to_the_os():
    def retained(policy: str) -> int:
        out = subprocess.run([sys.executable, "-c", PROBE, policy], capture_output=True, text=True, check=True)
        return int(out.stdout.strip())

    assert retained("default") >= 100  # MiB kept resident although freed
    assert retained("fixed") <= 20  # only the live 8 MiB block
