"""Keep optional heavy libraries out of processes that will not use them."""

from __future__ import annotations

import sys

BITSANDBYTES = "bitsandbytes"


def hide_bitsandbytes() -> bool:
    """Make bitsandbytes look absent to this process; True when it is now hidden.

    peft imports bitsandbytes whenever it is installed, and that import compiles kernels with torch.compile: about
    a second of start-up on a CPU, and a warning about its kernel hub, paid by every run that neither quantizes nor
    uses an 8-bit optimizer. A `None` entry in `sys.modules` is Python's own "not installed" marker:
    `importlib.util.find_spec` returns None and `import` raises ImportError, which peft and accelerate treat as
    absent. Call it before peft is imported, and only when nothing in the process will quantize; a process that
    has imported bitsandbytes already keeps it.
    """
    if BITSANDBYTES in sys.modules:
        return sys.modules[BITSANDBYTES] is None
    sys.modules[BITSANDBYTES] = None
    return True
