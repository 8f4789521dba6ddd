"""The Triton code of conch.kernels: ``@triton.jit`` kernels and helpers, one module per kernel family.

Only these modules import Triton. ``kernels/<family>.py`` keeps the reference path and the launchers and names
its kernels with :class:`conch.kernels._launch.TritonKernel` handles, which :func:`~conch.kernels._launch.kernel_for`
resolves at the first Triton launch, importing ``kernels/_triton/<family>.py`` (with ``TRITON_INTERPRET`` unset:
see ``conch.kernels._import_compiled``). So a CPU forward/backward on the reference path never imports Triton.
Example: ``from conch.kernels._triton import matmul; matmul._matmul_kernel`` (a ``JITFunction``).
"""
