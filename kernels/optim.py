"""Fused multi-tensor optimizer updates (Adam/AdamW, SGD): one launch per dtype group, updating in place."""

from __future__ import annotations

import contextlib

import numpy as np

from ._launch import TritonKernel, kernel_for, targ, use_triton, xp_of
from ._threads import for_blocks

# The @triton.jit kernels are in kernels/_triton/optim.py, imported by kernel_for at the first Triton
# launch: the reference path never imports Triton.
_adam_kernel = TritonKernel("optim", "_adam_kernel")
_sgd_kernel = TritonKernel("optim", "_sgd_kernel")


# ----------------------------------------------------------------------------------------------
# Launchers: validation, dtype groups, cached pointer tables
# ----------------------------------------------------------------------------------------------

_FLOATS = ("float32", "float16", "bfloat16", "float64")
_BLOCK_GPU, _BLOCK_INTERP = 1024, 128


def _addr(a):
    return a.ctypes.data if isinstance(a, np.ndarray) else a.data.ptr


class FlatPlan:
    """The device tables of one multi-tensor launch over ``lists`` (each a list of T arrays).

    ``ptrs``: (L, T) int64 addresses; ``sizes``: (T,) int64 element counts; ``work``: (programs, 2)
    int64 (tensor index, first element) pairs, one per ``block``-element chunk. A plan depends only
    on the addresses, sizes and dtypes, so the same plan is valid whenever these match (``key``);
    :func:`get_plan` caches plans by key, so a training loop uploads its tables once.
    """

    def __init__(self, lists, block):
        lists = [list(lst) for lst in lists]
        first = lists[0][0]
        xp = xp_of(first)
        self.block = block
        self.key = _plan_key(lists, block)
        sizes = [int(a.size) for a in lists[0]]
        work = [(t, s) for t, n in enumerate(sizes) for s in range(0, n, block)]
        self.num_tensors = len(sizes)
        self.num_programs = len(work)
        # the three tables travel in one host-to-device copy (gradients are new arrays every step, so a
        # training loop uploads a plan per step); ptrs, sizes and work are views of it
        n_lists, n_t = len(lists), len(sizes)
        host = np.empty(n_lists * n_t + n_t + 2 * len(work), dtype=np.int64)
        host[: n_lists * n_t] = [_addr(a) for lst in lists for a in lst]
        host[n_lists * n_t : (n_lists + 1) * n_t] = sizes
        host[(n_lists + 1) * n_t :] = np.array(work, dtype=np.int64).reshape(-1)
        with contextlib.nullcontext() if xp is np else first.device:  # the tables on the parameters' GPU
            table = xp.asarray(host)
        self.ptrs = table[: n_lists * n_t].reshape(n_lists, n_t)
        self.sizes = table[n_lists * n_t : (n_lists + 1) * n_t]
        self.work = table[(n_lists + 1) * n_t :].reshape(-1, 2)
        # Host -> device copies above run on CuPy's current stream and the kernel on Triton's (both the
        # legacy default stream unless the caller changed one), so the tables are ready at launch.


def _plan_key(lists, block):
    # Everything a table holds (addresses, sizes) or is read as (dtypes), plus where it lives: a parameter freed
    # and reallocated at the same address with the same size and dtype gets a table of identical contents, any
    # other change (size, dtype, another GPU whose allocator reused the address) a new one. No array identity
    # is kept, so a cached plan never keeps a freed parameter alive.
    first = lists[0][0]
    return (
        block,
        type(first).__module__,
        None if isinstance(first, np.ndarray) else first.device.id,
        tuple(tuple(_addr(a) for a in lst) for lst in lists),
        tuple(int(a.size) for a in lists[0]),
        tuple(lst[0].dtype.str if lst[0].dtype.name != "bfloat16" else "bf16" for lst in lists),
    )


_PLANS: dict = {}
_MAX_PLANS = 64


def get_plan(lists, block):
    """A :class:`FlatPlan` for ``lists``, built once per (addresses, sizes, dtypes) and cached."""
    key = _plan_key(lists, block)
    plan = _PLANS.get(key)
    if plan is None:
        if len(_PLANS) >= _MAX_PLANS:
            _PLANS.pop(next(iter(_PLANS)))
        plan = _PLANS[key] = FlatPlan(lists, block)
    return plan


def _check_lists(name, labels, lists):
    """Same length, same shape per index, float dtypes, C-contiguous (updated in place), one backend."""
    n = len(lists[0])
    for label, lst in zip(labels, lists, strict=True):
        if len(lst) != n:
            raise ValueError(f"{name}: {label} has {len(lst)} arrays but params has {n}")
    backend = None
    for i in range(n):
        ref_shape = tuple(lists[0][i].shape)
        for label, lst in zip(labels, lists, strict=True):
            a = lst[i]
            if a is None:
                raise ValueError(f"{name}: {label}[{i}] is None")
            if a.dtype.name not in _FLOATS:
                raise TypeError(f"{name}: {label}[{i}] must be a float array, got dtype {a.dtype}")
            if tuple(a.shape) != ref_shape:
                raise ValueError(f"{name}: {label}[{i}] has shape {a.shape} but params[{i}] has shape {ref_shape}")
            if not a.flags.c_contiguous:
                raise ValueError(f"{name}: {label}[{i}] (shape {a.shape}) must be C-contiguous: it is updated in place")
            kind = type(a).__module__.split(".")[0]
            if backend is None:
                backend = kind
            elif kind != backend:
                raise TypeError(f"{name}: {label}[{i}] is a {kind} array but earlier arrays are {backend} arrays")


def _groups(lists):
    """Indices of the tensors grouped by the dtypes of all their lists (one launch per group)."""
    groups: dict = {}
    for i in range(len(lists[0])):
        groups.setdefault(tuple(lst[i].dtype for lst in lists), []).append(i)
    return list(groups.values())


def _launch_multi(kernel, lists, scalars, flags, n_protos):
    """Launch ``kernel`` once per dtype group of ``lists``; absent optional lists get ``None`` prototypes."""
    on_gpu = not isinstance(lists[0][0], np.ndarray)
    block = _BLOCK_GPU if on_gpu else _BLOCK_INTERP
    for idx in _groups(lists):
        sub = [[lst[i] for i in idx] for lst in lists]
        if not any(a.size for a in sub[0]):
            continue
        plan = get_plan(sub, block)
        protos = [targ(lst[0]) for lst in sub] + [None] * (n_protos - len(sub))
        kernel_for(kernel, sub[0][0])[(plan.num_programs,)](
            targ(plan.ptrs), targ(plan.sizes), targ(plan.work), plan.num_tensors, *protos, *scalars,
            **flags, BLOCK=block, num_warps=4,
        )  # fmt: skip


# ----------------------------------------------------------------------------------------------
# Reference path (array API), one tensor at a time, in PyTorch's float32 op order
# (torch.optim._single_tensor_adam / _single_tensor_sgd, the default on CPU).
# ----------------------------------------------------------------------------------------------

_f32 = np.float32


def _fma(a, b, c):
    """float32 ``a * b + c`` rounded once, as PyTorch's CPU kernels (vec::fmadd) compute add-with-alpha,
    lerp and addcmul. The product of two float32 values is exact in float64; the sum is rounded to
    float64 and then to float32 (a double rounding that can differ from a true FMA in rare ties)."""

    def up(x):
        return float(x) if np.isscalar(x) else x.astype(np.float64)

    r = up(a) * up(b) + up(c)
    return r.astype(_f32)


def _sqrt(xp, a):
    """Square root of the reference path (one name, so a test can substitute PyTorch's CPU sqrt, which MKL
    computes to within 1 ulp rather than correctly rounded, and check the rest of the update bit for bit)."""
    return xp.sqrt(a)


#: Elements per block of a large tensor's update: its ~15 float64 temporaries then stay in the L2 cache.
_REF_BLOCK = 32768


def _chunked(update, arrays, s, passes):
    """``update(*arrays, s)`` on one tensor's C-contiguous arrays, over contiguous flat chunks on the CPU pool.

    The update is elementwise, so any split gives the same bits as one call (:mod:`conch.kernels._threads`);
    small tensors run in one call on this thread. NumPy only: CuPy arrays get one whole-array call.
    """
    p = arrays[0]
    if not isinstance(p, np.ndarray) or p.size <= _REF_BLOCK:
        update(*arrays, s)
        return
    flat = [None if a is None else a.reshape(-1) for a in arrays]  # views: the arrays are C-contiguous
    for_blocks(p.size, _REF_BLOCK, lambda a, b: update(*[None if f is None else f[a:b] for f in flat], s),
               work=p.size * passes)  # fmt: skip


def _adam_ref_one(p, g, m, v, vm, s):
    acc = np.float64 if p.dtype == np.float64 else _f32
    pf, gf = p.astype(acc), g.astype(acc)
    mf, vf = m.astype(acc), v.astype(acc)
    if s["maximize"]:
        gf = -gf
    fma = _fma if acc is _f32 else (lambda a, b, c: a * b + c)
    if s["weight_decay"] != 0:
        if s["decoupled"]:
            pf = pf * acc(s["decay"])  # AdamW: p *= 1 - lr * wd
        else:
            gf = fma(pf, acc(s["weight_decay"]), gf)  # Adam: g = g + wd * p  (torch: grad.add(p, alpha=wd))
    # m = lerp(m, g, w), w = 1 - beta1: m + w*(g - m) if |w| < 0.5 else g - (1 - w)*(g - m)
    mf = fma(acc(s["lerp_coeff"]), gf - mf, mf if s["lerp_small"] else gf)
    # v = v * beta2 + ((1 - beta2) * g) * g  (torch: mul_(beta2).addcmul_(g, g, value=1 - beta2))
    vf = fma(acc(s["one_minus_beta2"]) * gf, gf, vf * acc(s["beta2"]))
    xp = xp_of(p)
    if vm is not None:
        vmf = xp.maximum(vm.astype(acc), vf)  # max_v = max(max_v, v)
        vm[...] = vmf.astype(vm.dtype)
        sv = vmf
    else:
        sv = vf
    # denom = sqrt(v) / sqrt(bias_correction2) + eps; p = p + (-step_size * m) / denom
    denom = _sqrt(xp, sv) / acc(s["bc2_sqrt"]) + acc(s["eps"])
    pf = pf + (acc(s["neg_step_size"]) * mf) / denom
    p[...] = pf.astype(p.dtype)
    m[...] = mf.astype(m.dtype)
    v[...] = vf.astype(v.dtype)


def _sgd_ref_one(p, g, buf, s):
    acc = np.float64 if p.dtype == np.float64 else _f32
    fma = _fma if acc is _f32 else (lambda a, b, c: a * b + c)
    pf, d = p.astype(acc), g.astype(acc)
    if s["maximize"]:
        d = -d
    if s["weight_decay"] != 0:
        d = fma(pf, acc(s["weight_decay"]), d)  # d_p = g + wd * p
    if s["momentum"] != 0:
        if s["first_step"]:
            bf = d  # buf = d_p
        else:
            bf = fma(d, acc(s["one_minus_dampening"]), buf.astype(acc) * acc(s["momentum"]))  # m*buf + (1-damp)*d_p
        buf[...] = bf.astype(buf.dtype)
        d = fma(bf, acc(s["momentum"]), d) if s["nesterov"] else bf  # nesterov: d_p + m*buf
    p[...] = fma(d, acc(s["neg_lr"]), pf).astype(p.dtype)  # p -= lr * d_p


# ----------------------------------------------------------------------------------------------
# Public API
# ----------------------------------------------------------------------------------------------


def _triton_ok(lists):
    arrays = [a for lst in lists for a in lst]
    return all(a.dtype != np.float64 for a in arrays) and use_triton(*arrays)


def adam_step(
    params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs=None, *,
    lr, beta1, beta2, eps, weight_decay, step, decoupled=False, amsgrad=False, maximize=False,
):  # fmt: skip
    """One Adam (``decoupled=False``) or AdamW (``decoupled=True``) step over lists of arrays, IN PLACE.

    As torch.optim.Adam/AdamW (single-tensor path), with g = -grad when ``maximize``::

        AdamW: p *= 1 - lr*wd            Adam: g += wd * p
        m = lerp(m, g, 1 - beta1)        v = beta2*v + (1 - beta2)*g*g
        amsgrad: max_v = max(max_v, v) and v := max_v below
        p -= lr / (1 - beta1**step) * m / (sqrt(v) / sqrt(1 - beta2**step) + eps)

    ``step`` is the 1-based step number after increment. ``params``, ``exp_avgs``, ``exp_avg_sqs`` and
    ``max_exp_avg_sqs`` (only with ``amsgrad``) are overwritten; ``grads`` are only read. All arrays of
    index i share a shape and must be C-contiguous; dtypes may differ (fp16/bf16 params with fp32
    state: math in fp32). One Triton launch per group of tensors with the same dtypes.

    >>> p, g = [np.ones(3, np.float32)], [np.ones(3, np.float32)]
    >>> m, v = [np.zeros(3, np.float32)], [np.zeros(3, np.float32)]
    >>> adam_step(p, g, m, v, lr=0.1, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.0, step=1)
    """
    params, grads, exp_avgs, exp_avg_sqs = list(params), list(grads), list(exp_avgs), list(exp_avg_sqs)
    lists = [params, grads, exp_avgs, exp_avg_sqs]
    labels = ["params", "grads", "exp_avgs", "exp_avg_sqs"]
    if amsgrad:
        if max_exp_avg_sqs is None:
            raise ValueError("adam_step: amsgrad=True needs max_exp_avg_sqs")
        lists.append(list(max_exp_avg_sqs))
        labels.append("max_exp_avg_sqs")
    if not params:
        return
    if isinstance(step, bool) or int(step) != step or step < 1:
        raise ValueError(f"adam_step: step must be an integer >= 1 (the count after this update), got {step}")
    for label, b in (("beta1", beta1), ("beta2", beta2)):
        if not 0.0 <= b < 1.0:
            raise ValueError(f"adam_step: {label} must be in [0, 1), got {b}")
    _check_lists("adam_step", labels, lists)
    w = 1.0 - beta1
    lerp_small = abs(w) < 0.5
    bias_correction1 = 1.0 - beta1**step
    bias_correction2 = 1.0 - beta2**step
    wide = all(a.dtype == np.float64 for lst in lists for a in lst)
    s = dict(
        maximize=bool(maximize), decoupled=bool(decoupled), weight_decay=float(weight_decay),
        decay=1.0 - lr * weight_decay,
        # PyTorch's lerp: coefficient w (|w| < 0.5) or w - 1, in the parameters' precision (float32 values
        # unless every array is float64: rounding the weight to float32 there costs 1e-9 relative per step)
        lerp_coeff=(w if lerp_small else w - 1.0) if wide else (float(_f32(w)) if lerp_small else
                                                                float(_f32(w) - _f32(1.0))),
        lerp_small=lerp_small,
        beta2=float(beta2), one_minus_beta2=1.0 - beta2, bc2_sqrt=bias_correction2**0.5, eps=float(eps),
        neg_step_size=-(lr / bias_correction1),
    )  # fmt: skip
    if _triton_ok(lists):
        _launch_adam(lists, s)
        return
    vms = lists[4] if amsgrad else [None] * len(params)
    for p, g, m, v, vm in zip(params, grads, exp_avgs, exp_avg_sqs, vms, strict=True):
        _chunked(_adam_ref_one, (p, g, m, v, vm), s, passes=30)


def _launch_adam(lists, s):
    scalars = (
        s["decay"], s["weight_decay"], s["lerp_coeff"], s["beta2"], s["one_minus_beta2"], s["bc2_sqrt"],
        s["eps"], s["neg_step_size"],
    )  # fmt: skip
    flags = dict(
        MAXIMIZE=s["maximize"], HAS_WD=s["weight_decay"] != 0, DECOUPLED=s["decoupled"],
        LERP_SMALL=s["lerp_small"], AMSGRAD=len(lists) == 5,
    )  # fmt: skip
    _launch_multi(_adam_kernel, lists, scalars, flags, n_protos=5)


def sgd_step(
    params, grads, momentum_buffers=None, *,
    lr, momentum=0.0, dampening=0.0, weight_decay=0.0, nesterov=False, first_step=False, maximize=False,
):  # fmt: skip
    """One SGD step over lists of arrays, IN PLACE, as torch.optim.SGD (single-tensor path)::

        d = g + wd * p                                  (g = -grad when maximize)
        buf = d if first_step else momentum * buf + (1 - dampening) * d      (momentum != 0)
        d = d + momentum * buf if nesterov else buf
        p -= lr * d

    ``momentum_buffers`` (needed when ``momentum != 0``; allocate them with any values and pass
    ``first_step=True`` on the first step) and ``params`` are overwritten; ``grads`` are only read.

    >>> p, g = [np.ones(3, np.float32)], [np.ones(3, np.float32)]
    >>> sgd_step(p, g, lr=0.1)
    """
    params, grads = list(params), list(grads)
    lists, labels = [params, grads], ["params", "grads"]
    if momentum != 0:
        if momentum_buffers is None:
            raise ValueError(f"sgd_step: momentum={momentum} needs momentum_buffers")
        lists.append(list(momentum_buffers))
        labels.append("momentum_buffers")
    if nesterov and (momentum <= 0 or dampening != 0):
        raise ValueError("sgd_step: Nesterov momentum requires a momentum > 0 and zero dampening")
    if not params:
        return
    _check_lists("sgd_step", labels, lists)
    s = dict(
        maximize=bool(maximize), weight_decay=float(weight_decay), momentum=float(momentum),
        one_minus_dampening=1.0 - dampening, nesterov=bool(nesterov), first_step=bool(first_step), neg_lr=-float(lr),
    )  # fmt: skip
    if _triton_ok(lists):
        scalars = (s["neg_lr"], s["weight_decay"], s["momentum"], s["one_minus_dampening"])
        flags = dict(
            MAXIMIZE=s["maximize"], HAS_WD=s["weight_decay"] != 0, HAS_MOMENTUM=s["momentum"] != 0,
            FIRST_STEP=s["first_step"], NESTEROV=s["nesterov"],
        )  # fmt: skip
        _launch_multi(_sgd_kernel, lists, scalars, flags, n_protos=3)
        return
    bufs = lists[2] if momentum != 0 else [None] * len(params)
    for p, g, b in zip(params, grads, bufs, strict=True):
        _chunked(_sgd_ref_one, (p, g, b), s, passes=12)
