import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))  # shared test helpers: tiny.py

# Inductor's on-disk kernel cache does not key on ATEN_CPU_CAPABILITY: a run with ATEN_CPU_CAPABILITY=avx2 after a
# default (AVX-512) run on the same machine reuses the AVX-512 CPU FlexAttention kernels and gets O(1) wrong
# outputs (test_compiled_flex_on_cpu_is_right_for_sequences_shorter_than_a_block). One cache per capability.
capability = os.environ.get("ATEN_CPU_CAPABILITY")
if capability and "TORCHINDUCTOR_CACHE_DIR" not in os.environ:
    user = os.environ.get("USER", "user")
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(Path(tempfile.gettempdir()) / f"torchinductor_{user}_{capability}")
