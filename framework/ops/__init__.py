"""conch.ops: every built-in differentiable op, one class per op, grouped by what it does.

    elementwise   arithmetic, powers, exp/log, trig, activations, clamps, casts, rounding, erf
    reductions    sum, mean, var, norms, max/min, prod, cumulative sums and products
    shape         reshape, expand, permute, cat/split, copies, device moves, roll, diagonals, padding
    indexing      getitem/scatter-add, where, masked_fill, slice writes, take-along-dim, scatter, embedding
    linalg        matmul, einsum
    nn            softmax/log-softmax, im2col/col2im, max pooling
    sorting       (values, indices) results, argsort

An op's forward works on arrays and its backward on Tensors (so ``create_graph=True`` gives higher
derivatives). The fused kernels' ops live beside their kernels' adapters in :mod:`conch.fused`.
"""

from .elementwise import (
    Abs,
    Add,
    AddScalar,
    Atan2,
    Cast,
    Clamp,
    ClampTensor,
    Cos,
    Div,
    DivScalar,
    Erf,
    Exp,
    Expm1,
    Log,
    Log1p,
    LogSigmoid,
    Maximum,
    Mul,
    MulScalar,
    NanToNum,
    Neg,
    Pow,
    PowScalar,
    Relu,
    Rounding,
    RPowScalar,
    Rsqrt,
    RSubScalar,
    Sigmoid,
    Sin,
    Sqrt,
    Sub,
    Tanh,
)
from .indexing import (
    CopySlices,
    Embedding,
    GetItem,
    IndexAdd,
    MaskedFill,
    Scatter,
    ScatterFlat,
    TakeAlongDim,
    Where,
    _along,
    _gather,
    _is_basic,
    _scatter_add_into,
)
from .linalg import Einsum, MatMul, _op
from .nn import Col2im, Im2col, LogSoftmax, MaxPool2d, Softmax
from .reductions import (
    AMax,
    Cumprod,
    Cumsum,
    Mean,
    PNorm,
    Prod,
    StdFromVar,
    Sum,
    Var,
    _acc_dtype,
    _count,
    _keep_shape,
)
from .shape import (
    Alias,
    Cat,
    Clone,
    Contiguous,
    DiagEmbed,
    Diagonal,
    DiagonalAdjoint,
    Expand,
    Flip,
    Pad,
    PadScatter,
    PadTake,
    Permute,
    Reshape,
    Roll,
    Split,
    ToDevice,
)
from .sorting import MinMax, ValuesIndices, _argsort
