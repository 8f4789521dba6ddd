"""conch.nn: Module and Parameter, layers, losses, attention, initialisers (``nn.init``) and ``nn.utils``.

Example::

    import conch
    import conch.nn as nn

    model = nn.Sequential(nn.Linear(4, 16), nn.GELU(), nn.Linear(16, 3))
    loss = nn.CrossEntropyLoss()(model(conch.randn(8, 4)), conch.randint(0, 3, (8,)))
    loss.backward()
"""

from . import functional, init, parallel, utils
from .activation import (
    ELU,
    GELU,
    GLU,
    CosineSimilarity,
    Hardsigmoid,
    Hardswish,
    Hardtanh,
    LeakyReLU,
    LogSigmoid,
    LogSoftmax,
    Mish,
    PairwiseDistance,
    PReLU,
    ReLU,
    ReLU6,
    Sigmoid,
    SiLU,
    Softmax,
    Softplus,
    Softsign,
    Tanh,
)
from .attention import MultiheadAttention, NonDynamicallyQuantizableLinear
from .container import ModuleDict, ModuleList, ParameterDict, ParameterList, Sequential
from .conv import (
    AdaptiveAvgPool1d,
    AdaptiveAvgPool2d,
    AvgPool1d,
    AvgPool2d,
    Conv1d,
    Conv2d,
    ConvTranspose2d,
    Fold,
    MaxPool1d,
    MaxPool2d,
    Unfold,
    Upsample,
)
from .linear import Dropout, Dropout1d, Dropout2d, Embedding, Flatten, Identity, Linear, Unflatten
from .loss import (
    BCELoss,
    BCEWithLogitsLoss,
    CrossEntropyLoss,
    HuberLoss,
    KLDivLoss,
    L1Loss,
    MSELoss,
    NLLLoss,
    SmoothL1Loss,
)
from .module import Module, RemovableHandle
from .norm import BatchNorm1d, BatchNorm2d, GroupNorm, InstanceNorm1d, InstanceNorm2d, LayerNorm, RMSNorm
from .parameter import Buffer, Parameter
from .rnn import GRU, LSTM, RNN
from .transformer import (
    Transformer,
    TransformerDecoder,
    TransformerDecoderLayer,
    TransformerEncoder,
    TransformerEncoderLayer,
)

__all__ = [
    "functional",
    "init",
    "utils",
    "Module",
    "Parameter",
    "Buffer",
    "RemovableHandle",
    "Linear",
    "Embedding",
    "Dropout",
    "Identity",
    "Flatten",
    "Unflatten",
    "Conv1d",
    "Conv2d",
    "ConvTranspose2d",
    "MaxPool1d",
    "Unfold",
    "Fold",
    "AvgPool1d",
    "AdaptiveAvgPool1d",
    "Dropout1d",
    "Dropout2d",
    "InstanceNorm1d",
    "InstanceNorm2d",
    "Upsample",
    "GroupNorm",
    "RNN",
    "LSTM",
    "GRU",
    "TransformerEncoderLayer",
    "TransformerEncoder",
    "TransformerDecoderLayer",
    "TransformerDecoder",
    "Transformer",
    "PReLU",
    "Hardsigmoid",
    "Hardswish",
    "Hardtanh",
    "Softsign",
    "GLU",
    "CosineSimilarity",
    "PairwiseDistance",
    "MaxPool2d",
    "AvgPool2d",
    "AdaptiveAvgPool2d",
    "LayerNorm",
    "RMSNorm",
    "BatchNorm1d",
    "BatchNorm2d",
    "ReLU",
    "GELU",
    "SiLU",
    "Tanh",
    "Sigmoid",
    "LeakyReLU",
    "ELU",
    "Softplus",
    "Mish",
    "ReLU6",
    "LogSigmoid",
    "Softmax",
    "LogSoftmax",
    "Sequential",
    "ModuleList",
    "ModuleDict",
    "ParameterList",
    "ParameterDict",
    "MultiheadAttention",
    "NonDynamicallyQuantizableLinear",
    "CrossEntropyLoss",
    "NLLLoss",
    "MSELoss",
    "L1Loss",
    "BCEWithLogitsLoss",
    "BCELoss",
    "HuberLoss",
    "SmoothL1Loss",
    "KLDivLoss",
]
