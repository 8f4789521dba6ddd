"""The residuals convention: every kernel family's forward returns one NamedTuple type defined in its own file."""

import inspect

import numpy as np
import pytest

from conch.kernels import activations, attention, cross_entropy, dropout, matmul, norms, softmax

X = np.linspace(-2.0, 2.0, 12, dtype=np.float32).reshape(3, 4)

# (kernel module, its residuals type's name, forward calls on the reference path: every forward the family has)
FAMILIES = [
    (activations, "ActivationResiduals", [lambda: activations.activation_forward(X, "gelu")]),
    (matmul, "MatmulResiduals", [lambda: matmul.matmul_forward(X, X.T, None, "relu")]),
    (softmax, "SoftmaxResiduals", [lambda: softmax.softmax_forward(X), lambda: softmax.softmax_forward(X, log=True)]),
    (cross_entropy, "CrossEntropyResiduals", [lambda: cross_entropy.cross_entropy_forward(X, np.array([0, 1, 3]))]),
    (norms, "NormResiduals", [lambda: norms.layer_norm_forward(X, X[0]), lambda: norms.rms_norm_forward(X)]),
    (dropout, "DropoutResiduals", [lambda: dropout.dropout_forward(X, 0.5, seed=1)]),
    (attention, "AttentionResiduals", [lambda: attention.attention_forward(X, X, X, causal=True)]),
]


@pytest.mark.parametrize("module, name, forwards", FAMILIES, ids=[f[1] for f in FAMILIES])
def test_forward_returns_its_familys_namedtuple(reference, module, name, forwards):
    own = [n for n, c in vars(module).items() if inspect.isclass(c) and n.endswith("Residuals")]
    assert own == [name], f"{module.__name__} must define exactly one residuals type, found {own}"
    cls = getattr(module, name)
    assert cls.__module__ == module.__name__ and issubclass(cls, tuple) and cls._fields
    for forward in forwards:
        _, res = forward()
        assert type(res) is cls
        assert res._make(res) == res  # the framework rebuilds residuals field by field (tensor._keep_old_values)
