"""The versions a run or a comparison records (``results.json`` → ``versions``, ``comparison.json``)."""

from __future__ import annotations

import platform

__all__ = ["library_versions"]


def library_versions(peft: bool = True) -> dict[str, str | None]:
    """Python's and the libraries' versions.

    Args:
        peft: include peft's (`None` when it is not installed); a comparison's record leaves it out.

    Returns:
        ``{"python", "torch", "transformers", ["peft",] "classp_hf"}``, in that order.
    """
    import torch
    import transformers

    import classp_hf

    versions: dict[str, str | None] = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
    }
    if peft:
        try:
            import peft as peft_module

            versions["peft"] = peft_module.__version__
        except ImportError:
            versions["peft"] = None
    versions["classp_hf"] = classp_hf.__version__
    return versions
