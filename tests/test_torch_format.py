"""conch.load on torch.save files: the zip format written without PyTorch, refused globals, real files where torch is.

The generator below writes what ``torch.save`` writes (PyTorch >= 1.6 zip format, pickle protocol 2): a pickle
whose globals are the ones PyTorch emits (``torch._utils._rebuild_tensor_v2``, ``torch.FloatStorage``,
``collections.OrderedDict``, ...), produced by a ``pickle._Pickler`` that writes stand-in objects as GLOBAL
opcodes (so no module named ``torch`` has to exist), storages as persistent ids ``("storage", storage type, key,
location, numel)``, and a stored (uncompressed) zip with the records ``archive/data.pkl``, ``.format_version``,
``.storage_alignment``, ``byteorder``, ``data/<key>``, ``version`` and ``.data/serialization_id``, each record's
data aligned to 64 bytes with an extra field as PyTorch's writer does. ``python tests/test_torch_format.py``
rewrites the committed fixtures in ``tests/fixtures/`` from :func:`fixture_objects`.
"""

from __future__ import annotations

import collections
import io
import os
import pickle
import struct
import sys
import zipfile

import ml_dtypes
import numpy as np
import pytest

import conch
from conch.serialization import SerializationError
from conch.torch_format import UnsafePickleError

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures")

# ------------------------------------------------------------------------------------------------ the generator


class Global:
    """A global the pickle names as ``module.name`` (a GLOBAL opcode), like PyTorch's functions and classes."""

    def __init__(self, module, name):
        self.module, self.name = module, name

    def __call__(self, *args):  # pickle's save_reduce insists that the function be callable
        raise NotImplementedError


REBUILD_V2 = Global("torch._utils", "_rebuild_tensor_v2")
REBUILD_V3 = Global("torch._utils", "_rebuild_tensor_v3")
REBUILD_PARAMETER = Global("torch._utils", "_rebuild_parameter")
SIZE = Global("torch", "Size")
DEVICE = Global("torch", "device")
STORAGE_TYPES = {
    np.dtype(np.float32): "FloatStorage", np.dtype(np.float64): "DoubleStorage", np.dtype(np.float16): "HalfStorage",
    np.dtype(ml_dtypes.bfloat16): "BFloat16Storage", np.dtype(np.int64): "LongStorage",
    np.dtype(np.int32): "IntStorage", np.dtype(np.int16): "ShortStorage", np.dtype(np.int8): "CharStorage",
    np.dtype(np.uint8): "ByteStorage", np.dtype(np.bool_): "BoolStorage",
}  # fmt: skip
_GLOBALS = {name: Global("torch", name) for name in [*STORAGE_TYPES.values(), "UntypedStorage"]}
DTYPE_NAMES = {np.dtype(ml_dtypes.bfloat16): "bfloat16", np.dtype(np.bool_): "bool"}


def torch_dtype(dt):
    """The GLOBAL ``torch.<name>`` PyTorch writes for a dtype."""
    dt = np.dtype(dt)
    name = DTYPE_NAMES.get(dt, dt.name)
    return _GLOBALS.setdefault(name, Global("torch", name))


class Storage:
    """A storage: flat data (one dtype), pickled as PyTorch's persistent id."""

    def __init__(self, data, location="cpu", untyped=False):
        self.data, self.location, self.untyped = np.ascontiguousarray(data).reshape(-1), location, untyped


class FakeTensor:
    """A tensor on ``storage``, pickled as ``torch._utils._rebuild_tensor_v2`` (``_v3`` on an UntypedStorage)."""

    def __init__(self, storage, offset=0, size=None, stride=None, requires_grad=False, dtype=None):
        self.storage, self.offset, self.requires_grad, self.dtype = storage, offset, requires_grad, dtype
        self.size = tuple(storage.data.shape if size is None else size)
        if stride is None:  # contiguous
            stride, n = [], 1
            for s in reversed(self.size):
                stride.insert(0, n)
                n *= s
        self.stride = tuple(stride)

    @classmethod
    def of(cls, arr, requires_grad=False, location="cpu"):
        arr = np.asarray(arr)
        return cls(Storage(arr, location), 0, arr.shape, requires_grad=requires_grad)

    def __reduce_ex__(self, proto):
        # PyTorch's Tensor._reduce_ex_internal: a plain tuple of sizes, the stride tuple, an empty OrderedDict of
        # backward hooks; bytes storages add the dtype (_rebuild_tensor_v3)
        args = (self.storage, self.offset, self.size, self.stride, self.requires_grad, collections.OrderedDict())
        if self.storage.untyped:
            return (REBUILD_V3, (*args, torch_dtype(self.dtype)))
        return (REBUILD_V2, args)


class FakeParameter:
    """``torch.nn.Parameter``: ``_rebuild_parameter(tensor, requires_grad, OrderedDict())``."""

    def __init__(self, tensor, requires_grad=True):
        self.tensor, self.requires_grad = tensor, requires_grad

    def __reduce_ex__(self, proto):
        return (REBUILD_PARAMETER, (self.tensor, self.requires_grad, collections.OrderedDict()))


class FakeSize(tuple):
    """``torch.Size``, which pickles as ``torch.Size((2, 3))``."""

    def __reduce_ex__(self, proto):
        return (SIZE, (tuple(self),))


class FakeDevice:
    """``torch.device``, which pickles as ``torch.device('cuda', 0)``."""

    def __init__(self, *args):
        self.args = args

    def __reduce_ex__(self, proto):
        return (DEVICE, self.args)


class TorchPickler(pickle._Pickler):
    """Python's pickler (the C one cannot be taught new types) writing :class:`Global` as GLOBAL, and storages as
    ``torch.save``'s persistent ids, keyed "0", "1", ... in order of first appearance."""

    dispatch = pickle._Pickler.dispatch.copy()

    def __init__(self, f):
        super().__init__(f, protocol=2)
        self.storages = {}  # id(storage) -> (key, storage)

    def save_global_standin(self, obj):
        self.write(pickle.GLOBAL + f"{obj.module}\n{obj.name}\n".encode())
        self.memoize(obj)

    dispatch[Global] = save_global_standin

    def persistent_id(self, obj):
        if not isinstance(obj, Storage):
            return None
        key = self.storages.setdefault(id(obj), (str(len(self.storages)), obj))[0]
        if obj.untyped:
            return ("storage", _GLOBALS["UntypedStorage"], key, obj.location, obj.data.nbytes)
        return ("storage", _GLOBALS[STORAGE_TYPES[obj.data.dtype]], key, obj.location, obj.data.size)


def _aligned_write(zf, name, data):
    """Write a stored record whose data starts at a multiple of 64 bytes (PyTorch pads with an extra field "FB")."""
    info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
    info.compress_type = zipfile.ZIP_STORED
    start = zf.fp.tell() + 30 + len(name.encode()) + 4  # local header, name, the extra field's own header
    info.extra = b"FB" + struct.pack("<H", -start % 64) + b"Z" * (-start % 64)
    zf.writestr(info, data)


def torch_save_bytes(obj, archive="archive", byteorder="little", pickled=None):
    """The bytes ``torch.save(obj, f)`` writes for ``obj`` built from the stand-ins above (``pickled``: a
    ready-made data.pkl in place of obj's, with obj's storages)."""
    buf = io.BytesIO()
    p = TorchPickler(buf)
    p.dump(obj)  # also with ``pickled``: it finds the storages to write
    if pickled is None:
        pickled = buf.getvalue()
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as zf:
        _aligned_write(zf, f"{archive}/data.pkl", pickled)
        _aligned_write(zf, f"{archive}/.format_version", b"1")
        _aligned_write(zf, f"{archive}/.storage_alignment", b"64")
        _aligned_write(zf, f"{archive}/byteorder", byteorder.encode())
        for key, storage in sorted(p.storages.values(), key=lambda kv: int(kv[0])):
            data = storage.data if byteorder == sys.byteorder else storage.data.byteswap()
            _aligned_write(zf, f"{archive}/data/{key}", data.tobytes())
        _aligned_write(zf, f"{archive}/version", b"3\n")
        _aligned_write(zf, f"{archive}/.data/serialization_id", b"0123456789012345678901234567890123456789")
    return out.getvalue()


def write(path, obj, **kw):
    with open(path, "wb") as f:
        f.write(torch_save_bytes(obj, **kw))
    return path


# ------------------------------------------------------------------------------------------------ fixtures

_RNG = np.random.default_rng(14)
_W = _RNG.standard_normal((3, 4)).astype(np.float32)


def fixture_objects():
    """The committed fixtures: ``name -> (object to save, what conch.load must return as NumPy/plain values)``."""
    bf = np.array([1.5, -2.25, 3.0], dtype=ml_dtypes.bfloat16)
    state = collections.OrderedDict(
        [
            ("fc.weight", FakeTensor.of(_W)),
            ("fc.bias", FakeTensor.of(np.array([0.5, -1.0, 2.0], np.float32))),
            ("f64", FakeTensor.of(np.arange(4, dtype=np.float64) / 3)),
            ("f16", FakeTensor.of(np.array([[1, 2], [3, 4]], np.float16))),
            ("bf16", FakeTensor.of(bf)),
            ("i8", FakeTensor.of(np.array([-128, 0, 127], np.int8))),
            ("i16", FakeTensor.of(np.array([-300, 300], np.int16))),
            ("i32", FakeTensor.of(np.array([1 << 20], np.int32))),
            ("num_batches_tracked", FakeTensor.of(np.array(7, np.int64))),  # 0-d, as BatchNorm's
            ("u8", FakeTensor.of(np.array([0, 255], np.uint8))),
            ("mask", FakeTensor.of(np.array([True, False, True]))),
        ]
    )
    state._metadata = collections.OrderedDict([("", {"version": 1}), ("fc", {"version": 1})])  # as state_dict()
    base = np.arange(12, dtype=np.float32)
    shared = Storage(base)
    views = {
        "whole": FakeTensor(shared, 0, (3, 4)),
        "transposed": FakeTensor(shared, 0, (4, 3), (1, 4)),
        "row1": FakeTensor(shared, 4, (4,)),
        "evens": FakeTensor(shared, 1, (5,), (2,)),
        "expanded": FakeTensor(shared, 2, (2, 3), (0, 1)),
        "empty": FakeTensor(shared, 12, (0, 5)),
    }
    checkpoint = {
        "model": collections.OrderedDict(
            [("weight", FakeParameter(FakeTensor.of(_W, requires_grad=True))), ("scale", FakeTensor.of(_W[0]))]
        ),
        "optimizer": {
            "state": {0: {"step": FakeTensor.of(np.array(3.0, np.float32)), "exp_avg": FakeTensor.of(_W * 0.1)}},
            "param_groups": [{"lr": 1e-3, "betas": (0.9, 0.999), "eps": 1e-8, "amsgrad": False, "params": [0]}],
        },
        "epoch": 3,
        "name": "run-14",
        "best": None,
        "history": [0.5, 0.25],
        "shape": FakeSize((3, 4)),
        "dtype": torch_dtype(np.float32),
        "device": FakeDevice("cuda", 0),
        "blob": b"\x00\xffbytes",
    }
    want_views = {
        "whole": base.reshape(3, 4),
        "transposed": base.reshape(3, 4).T,
        "row1": base[4:8],
        "evens": base[1:11:2],
        "expanded": np.broadcast_to(base[2:5], (2, 3)),
        "empty": np.zeros((0, 5), np.float32),
    }
    return {
        "state_dict_dtypes.pt": (state, None),
        "shared_views.pt": (views, want_views),
        "nested_checkpoint.pt": (checkpoint, None),
    }


if __name__ == "__main__":  # regenerate the committed fixtures
    for fname, (obj, _) in fixture_objects().items():
        print(write(os.path.join(FIXTURES, fname), obj))
    sys.exit(0)


# ------------------------------------------------------------------------------------------------ tests


def _np(t):
    return t.numpy() if isinstance(t, conch.Tensor) else t


def test_committed_fixtures_are_what_the_generator_writes():
    """The fixtures in tests/fixtures/ are reproducible: the generator writes them byte for byte."""
    for fname, (obj, _) in fixture_objects().items():
        with open(os.path.join(FIXTURES, fname), "rb") as f:
            assert f.read() == torch_save_bytes(obj), fname


def test_state_dict_of_every_dtype():
    sd = conch.load(os.path.join(FIXTURES, "state_dict_dtypes.pt"))
    assert isinstance(sd, collections.OrderedDict)
    assert list(sd) == ["fc.weight", "fc.bias", "f64", "f16", "bf16", "i8", "i16", "i32", "num_batches_tracked",
                        "u8", "mask"]  # fmt: skip
    want, _ = fixture_objects()["state_dict_dtypes.pt"]
    for k, t in sd.items():
        assert isinstance(t, conch.Tensor) and not t.requires_grad
        exp = want[k].storage.data.reshape(want[k].size)
        assert t.dtype == exp.dtype and tuple(t.shape) == exp.shape, k
        np.testing.assert_array_equal(_np(t), exp)
    assert sd["bf16"].dtype == conch.bfloat16
    assert sd["num_batches_tracked"].shape == () and sd["num_batches_tracked"].item() == 7
    assert sd._metadata[""] == {"version": 1}  # the OrderedDict's attribute, as torch.load keeps it
    model = conch.nn.Linear(4, 3)
    model.load_state_dict({"weight": sd["fc.weight"], "bias": sd["fc.bias"]})
    np.testing.assert_array_equal(model.weight.detach().numpy(), _W)


def test_shared_storage_views_share_memory():
    got = conch.load(os.path.join(FIXTURES, "shared_views.pt"))
    _, want = fixture_objects()["shared_views.pt"]
    for k, exp in want.items():
        assert tuple(got[k].shape) == exp.shape, k
        np.testing.assert_array_equal(_np(got[k]), exp)
    assert got["transposed"].stride() == (1, 4) and got["evens"].stride() == (2,)
    # one buffer: writing through one tensor shows in the others, as after torch.load
    got["row1"].mul_(10)
    assert got["whole"][1].tolist() == [40.0, 50.0, 60.0, 70.0]
    assert got["transposed"][:, 1].tolist() == [40.0, 50.0, 60.0, 70.0]
    assert got["evens"].tolist() == [1.0, 3.0, 50.0, 70.0, 9.0]
    assert np.shares_memory(got["whole"].numpy(), got["expanded"].numpy())


def test_nested_containers_parameter_and_plain_values():
    ck = conch.load(os.path.join(FIXTURES, "nested_checkpoint.pt"))
    w = ck["model"]["weight"]
    assert isinstance(w, conch.nn.Parameter) and w.requires_grad
    np.testing.assert_array_equal(w.detach().numpy(), _W)
    assert isinstance(ck["model"], collections.OrderedDict) and not isinstance(ck["model"]["scale"], conch.nn.Parameter)
    opt = ck["optimizer"]
    assert list(opt["state"]) == [0] and opt["state"][0]["step"].item() == 3.0
    np.testing.assert_allclose(opt["state"][0]["exp_avg"].numpy(), _W * 0.1)
    assert opt["param_groups"] == [{"lr": 1e-3, "betas": (0.9, 0.999), "eps": 1e-8, "amsgrad": False, "params": [0]}]
    assert (ck["epoch"], ck["name"], ck["best"], ck["history"]) == (3, "run-14", None, [0.5, 0.25])
    assert isinstance(ck["shape"], conch.Size) and ck["shape"] == (3, 4)
    assert ck["dtype"] == conch.float32
    assert ck["device"] == "cuda:0" and isinstance(ck["device"], conch.device)
    assert ck["blob"] == b"\x00\xffbytes"


def test_generated_files_in_tmp(tmp_path):
    """Archive names other than "archive", big-endian files, UntypedStorage (_rebuild_tensor_v3)."""
    a = np.arange(6, dtype=np.float32).reshape(2, 3) - 2.5
    for kw in ({"archive": "my_model"}, {"byteorder": "big"}):
        got = conch.load(write(tmp_path / "x.pt", {"a": FakeTensor.of(a)}, **kw))
        np.testing.assert_array_equal(got["a"].numpy(), a)
    u16 = np.array([1, 65535], np.uint16)
    got = conch.load(write(tmp_path / "u.pt", FakeTensor(Storage(u16.view(np.uint8), untyped=True), 0, (2,),
                                                         dtype=np.uint16)))  # fmt: skip
    assert got.numpy().tolist() == [1, 65535] and got.dtype == np.uint16


def test_map_location(tmp_path):
    path = write(tmp_path / "gpu.pt", {"w": FakeTensor(Storage(_W, location="cuda:1"))})
    assert conch.load(path)["w"].device == "cpu"  # conch loads onto the host unless told otherwise
    assert conch.load(path, map_location="cpu")["w"].device == "cpu"
    assert conch.load(path, map_location={"cuda:0": "cpu"})["w"].device == "cpu"  # cuda:1 not named: host
    with pytest.raises(TypeError):
        conch.load(path, map_location=lambda s, loc: s)
    if conch.cuda.is_available():
        assert conch.load(path, map_location="cuda")["w"].is_cuda
        got = conch.load(path, map_location={"cuda:1": "cuda:0"})["w"]
        assert got.device == "cuda:0"
        np.testing.assert_array_equal(got.cpu().numpy(), _W.reshape(-1))  # a tensor of the flat storage


def _pickle_bytes(obj, protocol=2):
    buf = io.BytesIO()
    if protocol == 2:
        TorchPickler(buf).dump(obj)
    else:
        pickle.dump(obj, buf, protocol=protocol)
    return buf.getvalue()


class _Evil:
    def __init__(self, func, *args):
        self.func, self.args = func, args

    def __reduce__(self):
        return (self.func, self.args)


@pytest.mark.parametrize(
    "make",
    [
        lambda marker: _Evil(Global("os", "system"), f"touch {marker}"),
        lambda marker: _Evil(Global("posix", "system"), f"touch {marker}"),
        lambda marker: _Evil(Global("builtins", "eval"), f"open({str(marker)!r}, 'w')"),
        lambda marker: _Evil(Global("__builtin__", "exec"), f"open({str(marker)!r}, 'w')"),
        lambda marker: _Evil(Global("subprocess", "call"), ["touch", str(marker)]),
        # a refused global nested under allowed ones, and disguised as a torch name
        lambda marker: {"w": [FakeTensor.of(_W), _Evil(Global("torch", "load"), str(marker))]},
        lambda marker: _Evil(Global("torch._utils", "os"), f"touch {marker}"),
    ],
)
def test_malicious_globals_are_refused_before_running(tmp_path, make):
    marker = tmp_path / "pwned"
    evil = make(marker)
    path = tmp_path / "evil.pt"
    path.write_bytes(torch_save_bytes(evil))
    with pytest.raises(UnsafePickleError, match=r"refused global \S+") as e:
        conch.load(path)
    assert isinstance(e.value, SerializationError) and isinstance(e.value, pickle.UnpicklingError)
    assert str(path) in str(e.value)
    assert not marker.exists()  # nothing ran


def test_malicious_protocol_4_stack_global_is_refused(tmp_path):
    """STACK_GLOBAL (protocol >= 4) goes through find_class as well."""
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    path.write_bytes(torch_save_bytes(None, pickled=_pickle_bytes(_Evil(os.system, f"touch {marker}"), 4)))
    with pytest.raises(UnsafePickleError, match=r"refused global (os|posix)\.system"):
        conch.load(path)
    assert not marker.exists()


@pytest.mark.parametrize(
    ("tensor", "match"),
    [
        (lambda s: FakeTensor(s, 10, (4,)), "reaches past the end"),
        (lambda s: FakeTensor(s, 0, (3, 5), (5, 1)), "reaches past the end"),
        (lambda s: FakeTensor(s, -1, (2,)), "malformed tensor"),
        (lambda s: FakeTensor(s, 0, (2,), (-1,)), "stride must be"),
    ],
)
def test_out_of_bounds_views_are_refused(tmp_path, tensor, match):
    path = write(tmp_path / "bad.pt", {"t": tensor(Storage(np.arange(12, dtype=np.float32)))})
    with pytest.raises(SerializationError, match=match):
        conch.load(path)


def test_corrupt_archives(tmp_path):
    good = torch_save_bytes({"w": FakeTensor.of(_W)})
    # a flipped bit in the tensor data: the zip's CRC-32 catches it
    i = good.index(_W.tobytes())
    bad = bytearray(good)
    bad[i + 5] ^= 1
    (tmp_path / "flip.pt").write_bytes(bytes(bad))
    with pytest.raises(SerializationError, match="CRC"):
        conch.load(tmp_path / "flip.pt")
    (tmp_path / "trunc.pt").write_bytes(good[: len(good) // 2])
    with pytest.raises(SerializationError, match="trunc.pt"):
        conch.load(tmp_path / "trunc.pt")
    # a storage whose numel does not match its record
    obj = {"w": FakeTensor(Storage(_W), 0, (3, 4))}
    buf = io.BytesIO()
    p = TorchPickler(buf)
    p.dump(obj)
    pkl = buf.getvalue().replace(b"K\x0c", b"K\x0d", 1)  # numel 12 -> 13 (BININT1)
    (tmp_path / "numel.pt").write_bytes(torch_save_bytes(obj, pickled=pkl))
    with pytest.raises(SerializationError, match="holds 48 bytes, but its tensor metadata needs 52"):
        conch.load(tmp_path / "numel.pt")
    # garbage pickle
    (tmp_path / "junk.pt").write_bytes(torch_save_bytes(None, pickled=b"\x80\x02}q\x00(X"))
    with pytest.raises(SerializationError, match="malformed data.pkl"):
        conch.load(tmp_path / "junk.pt")


def test_unsupported_content_is_named(tmp_path):
    path = tmp_path / "c.pt"
    path.write_bytes(torch_save_bytes(None, pickled=_pickle_bytes(Global("torch", "ComplexFloatStorage"))))
    with pytest.raises(UnsafePickleError, match="ComplexFloatStorage: conch has no such dtype"):
        conch.load(path)
    ts = io.BytesIO()
    with zipfile.ZipFile(ts, "w") as zf:
        zf.writestr("m/data.pkl", b"")
        zf.writestr("m/constants.pkl", b"")
    path.write_bytes(ts.getvalue())
    with pytest.raises(SerializationError, match="TorchScript"):
        conch.load(path)
    path.write_bytes(b"\x80\x02\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19" + b"\x00" * 20)
    with pytest.raises(SerializationError, match="before PyTorch 1.6"):
        conch.load(path)


def test_conch_save_still_writes_safetensors(tmp_path):
    conch.save({"w": conch.tensor([1.0, 2.0])}, tmp_path / "x.pt")
    assert (tmp_path / "x.pt").read_bytes()[:2] != b"PK"
    assert conch.load(tmp_path / "x.pt")["w"].tolist() == [1.0, 2.0]


# ------------------------------------------------------------------------------------------------ real PyTorch


def test_real_torch_save_files_round_trip(tmp_path):
    """Where PyTorch is installed (the GPU machine), files written by torch.save itself load in conch."""
    torch = pytest.importorskip("torch")
    base = torch.arange(12, dtype=torch.float32)
    lin = torch.nn.Linear(4, 3)
    names = ("float64", "float16", "bfloat16", "int8", "int16", "int32", "int64", "uint8", "bool")
    dtypes = [getattr(torch, n) for n in names]
    obj = {
        "model": lin.state_dict(),
        "param": torch.nn.Parameter(torch.randn(2, 2)),
        "views": [base, base[1::2], base.view(3, 4).t()],
        "dtypes": {str(d): torch.ones(3, dtype=d) for d in dtypes},
        "size": torch.Size([2, 3]),
        "step": 5,
    }
    path = tmp_path / "real.pt"
    torch.save(obj, path)
    got = conch.load(path)
    np.testing.assert_array_equal(got["model"]["weight"].numpy(), lin.weight.detach().numpy())
    assert isinstance(got["param"], conch.nn.Parameter)
    np.testing.assert_array_equal(got["param"].detach().numpy(), obj["param"].detach().numpy())
    np.testing.assert_array_equal(got["views"][1].numpy(), base[1::2].numpy())
    np.testing.assert_array_equal(got["views"][2].numpy(), base.view(3, 4).t().numpy())
    got["views"][0].add_(1)
    assert got["views"][1].tolist() == (base[1::2] + 1).tolist()  # still one storage
    for k, t in got["dtypes"].items():
        assert t.float().tolist() == [1.0, 1.0, 1.0], k
    assert got["size"] == (2, 3) and got["step"] == 5
    # and the committed fixtures load in PyTorch as conch loads them
    sd = torch.load(os.path.join(FIXTURES, "state_dict_dtypes.pt"), weights_only=True)
    np.testing.assert_array_equal(sd["fc.weight"].numpy(), _W)
    views = torch.load(os.path.join(FIXTURES, "shared_views.pt"), weights_only=True)
    assert views["evens"].tolist() == [1.0, 3.0, 5.0, 7.0, 9.0]
