"""conch.einsum against numpy.einsum, with first and second derivatives by finite differences."""

import numpy as np
import pytest

import conch

CASES = [
    ("bij,bjk->bik", [(2, 3, 4), (2, 4, 5)]),
    ("bij,bjk", [(2, 3, 4), (2, 4, 5)]),  # implicit output
    ("bij->j", [(2, 3, 4)]),
    ("...j,bjk->...k", [(2, 3, 4), (2, 4, 5)]),
    ("bij,i->bj", [(2, 3, 4), (3,)]),
    ("i,i->", [(7,), (7,)]),
    ("ij,kl->ijkl", [(2, 3), (1, 2)]),
    # a label repeated inside one operand: a diagonal (issue #14)
    ("ii->i", [(3, 3)]),
    ("ii", [(4, 4)]),  # the trace
    ("iij,j->i", [(3, 3, 5), (5,)]),
    ("bii->b", [(2, 3, 3)]),
    ("iji->j", [(3, 2, 3)]),
    ("...ii->...i", [(2, 3, 3)]),
    ("iii->i", [(2, 2, 2)]),
    ("ii,jj->ij", [(3, 3), (2, 2)]),
]


@pytest.mark.parametrize("eq,shapes", CASES)
def test_einsum_matches_numpy_and_gradchecks(eq, shapes):
    rng = np.random.default_rng(0)
    arrays = [rng.standard_normal(s) for s in shapes]
    ts = [conch.tensor(a, requires_grad=True) for a in arrays]
    np.testing.assert_allclose(conch.einsum(eq, *ts).detach().numpy(), np.einsum(eq, *arrays), rtol=1e-12)
    assert conch.autograd.gradcheck(lambda *xs: conch.einsum(eq, *xs), ts)
    assert conch.autograd.gradgradcheck(lambda *xs: conch.einsum(eq, *xs) * conch.einsum(eq, *xs), ts)


def test_einsum_errors_name_shapes():
    a, b = conch.randn(2, 3), conch.randn(4, 5)
    with pytest.raises(ValueError, match=r"'ijk'.*\(2, 3\)"):
        conch.einsum("ijk,kl->il", a, b)
    with pytest.raises(RuntimeError, match=r"\(2, 3\), \(4, 5\)"):
        conch.einsum("ij,jk->ik", a, b)
    with pytest.raises(ValueError, match="2 operands"):
        conch.einsum("ij,jk->ik", a)
    with pytest.raises(RuntimeError, match=r"subscript i is repeated for operand 0 .* 2 != 3"):
        conch.einsum("ii->i", a)


def test_einsum_under_autocast_is_low_precision():
    a, b = conch.randn(3, 4), conch.randn(4, 2)
    with conch.amp.autocast(dtype=conch.bfloat16):
        assert conch.einsum("ij,jk->ik", a, b).dtype == conch.bfloat16
