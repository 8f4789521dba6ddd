"""conch.ops: every built-in differentiable op, one class per op, grouped by what it does.

    elementwise   arithmetic, powers, exp/log, trig, activations, clamps, casts, rounding, erf
    reductions    sum, mean, var, norms, max/min, prod, cumulative sums and products
    shape         reshape, expand, permute, cat/split, copies, device moves, roll, diagonals, padding
    indexing      getitem/scatter-add, where, masked_fill, slice writes, take-along-dim, scatter, embedding
    linalg        matmul, einsum
    nn            softmax/log-softmax, im2col/col2im, max pooling
    sorting       (values, indices) results, argsort
    special       erfinv, lgamma, digamma, polygamma, i0, incomplete gammas (through SciPy)

An op's forward works on arrays and its backward on Tensors (so ``create_graph=True`` gives higher
derivatives). The fused kernels' ops live beside their kernels' adapters in :mod:`conch.fused`.
"""

from .elementwise import (
    Abs,
    Acos,
    Acosh,
    Add,
    AddScalar,
    Asin,
    Asinh,
    Atan,
    Atan2,
    Atanh,
    Cast,
    Clamp,
    ClampTensor,
    Copysign,
    Cos,
    Cosh,
    Div,
    DivRounded,
    DivScalar,
    Erf,
    Exp,
    Exp2,
    Expm1,
    Fmod,
    Hypot,
    Log,
    Log1p,
    LogAddExp,
    LogBase,
    LogSigmoid,
    Maximum,
    Mul,
    MulScalar,
    NanToNum,
    Neg,
    Pow,
    PowScalar,
    Relu,
    Remainder,
    Rounding,
    RPowScalar,
    Rsqrt,
    RSubScalar,
    Sigmoid,
    Sin,
    Sinh,
    Sqrt,
    Sub,
    Tan,
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
    ScatterReduce,
    TakeAlongDim,
    Where,
    _along,
    _gather,
    _is_basic,
    _scatter_add_into,
)
from .linalg import Einsum, MatMul, _op
from .nn import Col2im, ConvNd, Im2col, LogSoftmax, MaxPool2d, Softmax
from .reductions import (
    AMax,
    Cumprod,
    Cumsum,
    LogCumSumExp,
    Mean,
    PNorm,
    Prod,
    StdFromVar,
    Sum,
    Var,
    _acc_dtype,
    _cum_extreme_index,
    _keep_shape,
    _scan,
    count,
    mean_array,
    sum_array,
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
