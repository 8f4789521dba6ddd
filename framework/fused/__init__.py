"""conch.fused: each fused kernel's framework side, one module per kernel family, mirroring conch.kernels.

    fused/matmul.py         kernels/matmul.py          act(a @ b + bias): ``@``, ``conch.matmul``, ``F.linear``
    fused/activations.py    kernels/activations.py     relu, gelu, silu, tanh, sigmoid, leaky_relu, elu
    fused/softmax.py        kernels/softmax.py         softmax, log_softmax
    fused/cross_entropy.py  kernels/cross_entropy.py   cross-entropy from logits
    fused/norms.py          kernels/norms.py           layer_norm, rms_norm
    fused/dropout.py        kernels/dropout.py         dropout with a counter-based mask
    fused/attention.py      kernels/attention.py       flash attention (scaled_dot_product_attention)

Each module holds the Op adapter (forward and backward call the kernel pair ``NAME_forward``/``NAME_backward``,
which take the Triton path for CuPy arrays and the reference path otherwise), its composite fallback written with
Tensor ops (differentiated when a backward is itself recorded, ``create_graph=True``) and its argument checks.
"""

from . import activations, attention, cross_entropy, dropout, matmul, norms, softmax
