"""The autocast policy table: which dtype each op computes in under ``conch.amp.autocast`` (the one place it lives).

Three policies, as in PyTorch's autocast op lists:

``LOW``      cast floating inputs to the autocast dtype (float16 or bfloat16): the matmul family, whose
             tensor-core kernels are where low precision pays off.
``FP32``     cast floating inputs to float32: ops whose accuracy or range suffers in 16 bits (exp, log,
             softmax, losses, normalisation statistics, reductions, pow).
``PROMOTE``  cast floating inputs to the widest floating dtype among them (float16 + float32 -> float32;
             float16 + bfloat16 -> float32): everything else (add, mul, cat, where, ...). Names not in the
             table get this policy.

float64 inputs are never cast (as in PyTorch): a float64 tensor stays float64 under every policy.

Example::

    from conch.amp.policy import policy_of, POLICY, LOW
    policy_of("linear")        # 'low'
    policy_of("softmax")       # 'fp32'
    policy_of("add")           # 'promote'
    sorted(n for n, p in POLICY.items() if p == LOW)
"""

from __future__ import annotations

LOW = "low"
FP32 = "fp32"
PROMOTE = "promote"

# attention projections of MultiheadAttention go through "linear", so they need no entry of their own
_LOW_OPS = ("matmul", "mm", "bmm", "linear", "conv2d", "scaled_dot_product_attention", "einsum", "addmm", "baddbmm")

_FP32_OPS = (
    # softmax family and losses
    "softmax", "log_softmax", "cross_entropy", "nll_loss", "mse_loss", "l1_loss",
    "binary_cross_entropy_with_logits", "huber_loss", "smooth_l1_loss",
    # normalisation statistics
    "layer_norm", "rms_norm", "batch_norm", "group_norm",
    # reductions
    "sum", "mean", "var", "std", "norm", "cumsum", "prod", "logsumexp",
    # pointwise ops whose range or accuracy suffers in 16 bits
    "exp", "log", "log1p", "expm1", "pow", "rsqrt", "reciprocal",
)  # fmt: skip

# Every name above is one an op looks up (cast_for / tensor.py's _fp32), so the table is what runs. PROMOTE is the
# default for names not listed (add, mul, cat, where, ...): they need no entry.
POLICY: dict[str, str] = {
    **{n: FP32 for n in _FP32_OPS},
    **{n: LOW for n in _LOW_OPS},
}
"""op name -> policy. Read it, print it (:func:`policy_table`); change it only through :func:`set_policy`."""

_VALID = (LOW, FP32, PROMOTE)


def policy_of(op_name: str) -> str:
    """The policy of ``op_name``: ``"low"``, ``"fp32"`` or ``"promote"`` (the default for unlisted names)."""
    return POLICY.get(op_name, PROMOTE)


def set_policy(op_name: str, policy: str) -> str:
    """Set the policy of ``op_name`` (e.g. for a custom op); returns the previous one."""
    if policy not in _VALID:
        raise ValueError(f"unknown autocast policy {policy!r} for op {op_name!r}; expected one of {_VALID}")
    prev = policy_of(op_name)
    POLICY[op_name] = policy
    return prev


def policy_table() -> str:
    """The table as Markdown (the same table docs/mixed_precision.md shows)."""
    desc = {
        LOW: "autocast dtype (float16 / bfloat16)",
        FP32: "float32",
        PROMOTE: "widest floating input dtype (unlisted ops too)",
    }
    rows = ["| policy | computes in | ops |", "|---|---|---|"]
    for pol in _VALID:
        names = ", ".join(f"`{n}`" for n in sorted(n for n, p in POLICY.items() if p == pol))
        rows.append(f"| {pol.upper()} | {desc[pol]} | {names} |")
    return "\n".join(rows)
