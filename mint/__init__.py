"""MINT: data-free, budget-targeted, expert-aware mixed-precision quantization of MoE language models.

The method is described in docs/METHOD.md; each stage is one module with a `main()` that `mint <stage>`
dispatches to (see mint/cli.py).
"""

__version__ = "0.1.0"
