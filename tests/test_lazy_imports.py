"""What ``import conch`` and a CPU forward/backward load: neither CuPy, Triton nor ml_dtypes (no timed assertion).

The fused kernels' CPU reference paths load their kernel modules but not Triton: the ``@triton.jit`` code lives in
``kernels/_triton/`` and is imported at the first Triton launch (under ``TRITON_INTERPRET=1`` or on a GPU).
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

import conch
from conch import _dtype as D

HEAVY = ("cupy", "cupyx", "triton", "ml_dtypes")

# a CPU training step of the plain kind: Linear layers (Sequential fuses Linear + ReLU), elementwise ops,
# reductions, reshapes and a matmul, forward and backward, and an SGD step
_STEP = """
import conch
import conch.nn as nn
m = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4), nn.Tanh())
opt = conch.optim.SGD(m.parameters(), lr=0.1)
x = conch.randn(5, 8)
h = m(x).reshape(20) * 2.0 - 1
w = conch.randn(3, 4, requires_grad=True)
loss = (h ** 2).mean() + (w @ conch.randn(4, 2)).sigmoid().sum(dim=1).mean() + w.relu().transpose(0, 1).sum()
loss.backward()
opt.step()
repr(loss)
"""


def _loaded(code):
    """The HEAVY packages loaded after running ``code`` in a fresh interpreter on the CPU reference path."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("CONCH_SIMULATE_GPU", "CONCH_TEST_DEVICE", "TRITON_INTERPRET", "CONCH_KERNELS")}  # fmt: skip
    tops = "{m.split('.')[0] for m in sys.modules}"
    probe = f"import sys, json\n{code}\nprint(json.dumps(sorted({tops} & {set(HEAVY)!r})))"
    r = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    return json.loads(r.stdout.strip().splitlines()[-1])


def test_import_conch_loads_no_heavy_module():
    assert _loaded("import conch") == []


def test_cpu_forward_backward_loads_no_heavy_module():
    assert _loaded(_STEP) == []


def test_kernel_reference_paths_load_no_ml_dtypes():
    # layer norm, GELU, softmax, cross-entropy and AdamW on the CPU reference path import their kernel modules,
    # which list bfloat16 by name: ml_dtypes stays out
    code = (
        "import conch\nimport conch.nn as nn, conch.nn.functional as F\n"
        "m = nn.Sequential(nn.Linear(8, 16), nn.GELU(), nn.LayerNorm(16), nn.Linear(16, 4))\n"
        "y = F.gelu(m(conch.randn(5, 8))).log_softmax(-1)\n"
        "F.cross_entropy(y, conch.tensor([0, 1, 2, 3, 0])).backward()\n"
        "conch.optim.AdamW(m.parameters()).step()\n"
    )
    assert "ml_dtypes" not in _loaded(code)


def test_kernel_modules_import_in_compiled_mode_under_the_interpreter():
    # TRITON_INTERPRET set before the first kernel use (the framework imports kernel modules lazily): the module
    # still holds compiled-mode functions, whose interpreted twins run NumPy launches, and both paths keep working
    code = (
        "import os\nos.environ['TRITON_INTERPRET'] = '1'\n"
        "import numpy as np, conch, triton\n"
        "from triton.runtime.jit import JITFunction\n"
        "from conch.kernels import _launch\n"
        "assert type(conch.kernels.matmul._matmul_kernel.resolve()) is JITFunction\n"
        "assert os.environ['TRITON_INTERPRET'] == '1'\n"
        "before = sum(_launch.LAUNCHES.values())\n"
        "a, b = conch.randn(1, 3, 4, requires_grad=True), conch.randn(4, 2)\n"
        "(a @ b).sum().backward()\n"
        "assert sum(_launch.LAUNCHES.values()) > before  # the Triton path, interpreted\n"
        "del os.environ['TRITON_INTERPRET']\n"
        "np.testing.assert_allclose(a.grad.numpy(), np.ones((1, 3, 2)) @ b.numpy().T, rtol=1e-5)\n"
    )
    _loaded(code)  # asserts the subprocess succeeded


# every fused kernel family on the CPU reference path, forward and backward, and a fused AdamW step
_KERNEL_STEP = """
import conch, conch.nn as nn, conch.nn.functional as F
conch.manual_seed(0)
lin = nn.Linear(8, 16)
h = F.gelu(lin(conch.randn(2, 5, 8)))  # the fused linear + GELU
h = F.layer_norm(h, (16,)) + F.rms_norm(h, (16,), weight=conch.ones(16))
q = h.reshape(2, 2, 5, 8)
a = F.scaled_dot_product_attention(q, q, q, is_causal=True)
a = F.dropout(a, 0.25, training=True).reshape(10, 16)
w = conch.randn(7, 16, requires_grad=True)
t = conch.tensor([0, 1, 2, 3, 4, 5, 6, 0, 1, 2])
loss = F.cross_entropy(a.softmax(-1), t) + F.linear_cross_entropy(a, w, t)
loss.backward()
conch.optim.AdamW(list(lin.parameters()) + [w], fused=True).step()
assert lin.weight.grad is not None and w.grad is not None
"""
_FAMILIES = ("activations", "matmul", "norms", "softmax", "cross_entropy", "attention", "dropout",
             "linear_cross_entropy", "optim")  # fmt: skip


def test_cpu_kernel_reference_paths_load_no_triton():
    # the kernel modules did load (so the probe saw the fused paths), their Triton halves did not
    check = (
        f"mods = {{m for m in sys.modules if m.startswith('conch.kernels.')}}\n"
        f"assert {{'conch.kernels.' + f for f in {_FAMILIES!r}}} <= mods, sorted(mods)\n"
        f"assert not any(m.split('.')[:3] == ['conch', 'kernels', '_triton'] for m in mods), sorted(mods)\n"
    )
    assert "triton" not in _loaded("import sys\n" + _KERNEL_STEP + check)


def test_a_triton_launch_imports_triton_and_matches_the_reference():
    # under the interpreter the same families take their Triton paths (the probe above could see Triton), load it
    # at the first launch only, and agree with the reference path run in the same process
    code = (
        "import os\nos.environ['TRITON_INTERPRET'] = '1'\n"
        "import numpy as np, conch, conch.nn.functional as F\n"
        "from conch.kernels import _launch\n"
        "assert 'triton' not in sys.modules\n"
        "def run():\n"
        "    conch.manual_seed(0)\n"
        "    x = conch.randn(3, 5, 8, requires_grad=True)\n"
        "    w = conch.randn(12, 8, requires_grad=True)\n"
        "    h = F.gelu(F.linear(x, w))\n"
        "    h = F.layer_norm(h, (12,)).softmax(-1)\n"
        "    loss = F.cross_entropy(h.reshape(15, 12), conch.arange(15) % 12)\n"
        "    loss.backward()\n"
        "    return [loss.detach().numpy(), x.grad.numpy(), w.grad.numpy()]\n"
        "got = run()\n"
        "assert 'triton' in sys.modules and 'conch.kernels._triton.norms' in sys.modules\n"
        "assert {k for k, v in _launch.LAUNCHES.items() if v} >= {'_matmul_kernel', '_norm_fwd_kernel', "
        "'_norm_bwd_kernel', '_softmax_fwd_row_kernel', '_ce_fwd_kernel', '_ce_bwd_kernel'}, _launch.LAUNCHES\n"
        "del os.environ['TRITON_INTERPRET']\n"
        "n = sum(_launch.LAUNCHES.values())\n"
        "want = run()\n"
        "assert sum(_launch.LAUNCHES.values()) == n  # the reference path this time\n"
        "for g, r in zip(got, want):\n"
        "    np.testing.assert_allclose(g, r, rtol=2e-5, atol=1e-6)\n"
    )
    assert "triton" in _loaded("import sys\n" + code)


def test_launch_helpers_match_tritons():
    # the launchers' grid and block arithmetic, now without Triton: the same numbers as triton.cdiv/next_power_of_2
    triton = pytest.importorskip("triton")  # a dependency of conch; the closed forms below are checked anyway
    from conch.kernels._launch import cdiv, next_power_of_2

    for n in range(0, 300):
        assert next_power_of_2(n) == triton.next_power_of_2(n), n
        for b in (1, 3, 16, 1024):
            assert cdiv(n, b) == triton.cdiv(n, b) == -(-n // b), (n, b)
    assert [next_power_of_2(n) for n in (1, 2, 3, 5, 8, 9, 4097)] == [1, 2, 4, 8, 8, 16, 8192]


def test_kernel_handles_resolve_to_the_triton_modules_functions():
    from triton.runtime.jit import JITFunction

    from conch.kernels import norms
    from conch.kernels._launch import TritonKernel

    h = norms._norm_fwd_kernel
    assert type(h) is TritonKernel and repr(h) == "TritonKernel('norms', '_norm_fwd_kernel')"
    fn = h.resolve()
    assert isinstance(fn, JITFunction) and fn is h.resolve()
    assert fn is conch.kernels._triton.norms._norm_fwd_kernel and fn.fn.__module__ == "conch.kernels._triton.norms"
    with pytest.raises(AttributeError, match="_no_such_kernel"):
        TritonKernel("norms", "_no_such_kernel").resolve()


def test_dtype_sets_match_by_name():
    from conch.kernels._launch import DtypeSet

    s = DtypeSet(("float32", "bfloat16"))
    assert np.dtype(np.float32) in s and D.bfloat16 in s
    assert np.dtype(np.float64) not in s and np.dtype(np.int32) not in s and "float32" in s


def test_the_probe_can_fail():
    # the check above would see ml_dtypes once bfloat16 is used: so a clean result means something
    assert _loaded("import conch; conch.ones(2, dtype=conch.bfloat16)") == ["ml_dtypes"]


def test_bfloat16_is_a_lazy_attribute_that_works():
    code = (
        "import conch, sys, ml_dtypes, numpy as np\n"
        "assert conch.bfloat16 == np.dtype(ml_dtypes.bfloat16)\n"
        "t = conch.ones(3, dtype='bf16')\n"
        "assert t.dtype == conch.bfloat16 and t.is_floating_point()\n"
        "assert (t.float() * 2).tolist() == [2.0, 2.0, 2.0]\n"
        "assert (conch.ones(2, dtype=conch.float16) + conch.ones(2, dtype=conch.bfloat16)).dtype == conch.float32\n"
    )
    assert "ml_dtypes" in _loaded(code)


def test_a_bfloat16_array_made_by_the_caller_registers_the_dtype():
    # ml_dtypes imported after conch, by the caller: its array still makes a floating tensor
    code = (
        "import conch, ml_dtypes, numpy as np\n"
        "t = conch.tensor(np.ones(2, dtype=ml_dtypes.bfloat16))\n"
        "assert t.is_floating_point() and t.requires_grad_().requires_grad\n"
        "assert conch.from_numpy(np.ones(2, dtype=ml_dtypes.bfloat16)).is_floating_point()\n"
    )
    assert "ml_dtypes" in _loaded(code)


def test_dtype_tables_hold_bfloat16_once_loaded():
    bf = D.bfloat16  # loads ml_dtypes in this process (other tests use bfloat16 anyway)
    assert bf in D.FLOATING and bf in D.HALF and D.as_dtype("bfloat16") is bf and D.as_dtype("torch.bf16") is bf
    assert D.is_bfloat16(bf) and not D.is_bfloat16(np.dtype(np.float16))
    assert D.result_type((bf, 1), (D.float16, 1)) == D.float32
    seen = []
    D.on_bfloat16(seen.append)  # a table registered after the load gets it at once
    assert seen == [bf]
    with pytest.raises(TypeError, match="unknown dtype"):
        D.as_dtype("bfloat17")
    assert conch.bfloat16 is bf
