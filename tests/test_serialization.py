"""conch.save / conch.load: safetensors round trips, interoperability, atomic writes, corrupt files."""

import json
import os
import signal
import struct
import subprocess
import sys
import textwrap
import time

import ml_dtypes
import numpy as np
import pytest

import conch
from conch.serialization import SerializationError

DTYPES = ["float32", "float64", "float16", "bfloat16", "int64", "int32", "int16", "int8", "uint8", "bool"]


def _host(t):
    return t.detach().cpu().numpy()


def _sample(dtype, shape, rng):
    dt = conch._dtype.as_dtype(dtype)
    if dt == np.bool_:
        return rng.random(shape) > 0.5
    if dt.kind in "iu":
        info = np.iinfo(dt)
        return rng.integers(max(info.min, -1000), min(info.max, 1000), size=shape).astype(dt)
    return rng.standard_normal(shape).astype(dt)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(), (0,), (5,), (3, 0, 2), (2, 3, 4)])
def test_round_trip_every_dtype_and_shape(dtype, shape, device, tmp_path):
    a = _sample(dtype, shape, np.random.default_rng(0))
    t = conch.tensor(a, device=device)
    conch.save({"t": t}, tmp_path / "a.safetensors")
    back = conch.load(tmp_path / "a.safetensors", device=device)["t"]
    assert back.dtype == t.dtype and back.shape == t.shape and back.device == t.device
    np.testing.assert_array_equal(
        _host(back).reshape(-1).view(np.uint8), a.reshape(-1).view(np.uint8)
    )  # bit for bit (NaN-safe)


def test_nested_structure_round_trip(device, tmp_path):
    obj = {
        "model": {"fc.weight": conch.randn(3, 4, device=device), "fc.bias": conch.zeros(4, device=device)},
        "optimizer": {
            "state": {0: {"step": conch.tensor(3.0), "exp_avg": conch.ones(2, device=device)}, 1: {}},
            "param_groups": [{"lr": 0.1, "betas": (0.9, 0.999), "params": [0, 1], "fused": None, "nesterov": False}],
        },
        "step": 12,
        "floats": [1.5, float("inf"), -0.0],
        "name": "run-1",
        "empty": [],
        "tup": (1, "a", None),
        "big": 2**100,  # Python ints of any size (RNG states are 128-bit)
        "array": np.arange(3, dtype=np.int16),
    }
    conch.save(obj, tmp_path / "n.safetensors")
    back = conch.load(tmp_path / "n.safetensors", device=device)
    assert back["step"] == 12 and back["name"] == "run-1" and back["empty"] == [] and back["big"] == 2**100
    assert back["tup"] == (1, "a", None) and isinstance(back["tup"], tuple)
    assert back["floats"][:2] == [1.5, float("inf")] and math_copysign(back["floats"][2]) == -1.0
    assert list(back["optimizer"]["state"]) == [0, 1]  # integer keys stay integers
    assert back["optimizer"]["state"][1] == {}
    g = back["optimizer"]["param_groups"][0]
    assert g["betas"] == (0.9, 0.999) and g["params"] == [0, 1] and g["fused"] is None and g["nesterov"] is False
    np.testing.assert_array_equal(_host(back["model"]["fc.weight"]), _host(obj["model"]["fc.weight"]))
    assert list(back["model"]) == ["fc.weight", "fc.bias"]  # order kept
    assert isinstance(back["array"], np.ndarray) and back["array"].dtype == np.int16  # arrays stay arrays


def math_copysign(x):
    import math

    return math.copysign(1.0, x)


def test_non_contiguous_and_single_tensor(tmp_path):
    t = conch.arange(12, dtype=conch.float32).reshape(3, 4).transpose(0, 1)
    conch.save(t, tmp_path / "t.safetensors")
    back = conch.load(tmp_path / "t.safetensors")
    np.testing.assert_array_equal(_host(back), _host(t))


def test_readable_by_safetensors_library(tmp_path):
    from safetensors import safe_open
    from safetensors.numpy import load_file

    sd = {"layer.0.weight": conch.randn(4, 3), "layer.0.bias": conch.randn(4), "n": conch.tensor([1, 2, 3])}
    conch.save(sd, tmp_path / "m.safetensors")
    arrays = load_file(str(tmp_path / "m.safetensors"))
    assert set(arrays) == set(sd)
    for k in sd:
        np.testing.assert_array_equal(arrays[k], _host(sd[k]))
    with safe_open(str(tmp_path / "m.safetensors"), framework="numpy") as f:
        assert f.metadata()["format"] == "pt"
        assert json.loads(f.metadata()["conch"])  # the structure skeleton is plain JSON


def test_nested_keys_are_dotted_paths(tmp_path):
    from safetensors.numpy import load_file

    conch.save({"opt": {"state": {0: {"exp_avg": conch.ones(2)}}}, "w": [conch.zeros(1)]}, tmp_path / "d.safetensors")
    assert set(load_file(str(tmp_path / "d.safetensors"))) == {"opt.state.0.exp_avg", "w.0"}


def test_bfloat16_readable_by_torch(tmp_path):
    torch = pytest.importorskip("torch")
    from safetensors.torch import load_file

    a = np.random.default_rng(1).standard_normal(6).astype(ml_dtypes.bfloat16)
    conch.save({"x": conch.tensor(a)}, tmp_path / "b.safetensors")
    x = load_file(str(tmp_path / "b.safetensors"))["x"]
    assert x.dtype == torch.bfloat16
    np.testing.assert_array_equal(x.view(torch.int16).numpy(), a.view(np.int16))


def test_loads_files_written_by_the_safetensors_library(tmp_path):
    from safetensors.numpy import save_file

    save_file({"a": np.arange(6, dtype=np.float32).reshape(2, 3), "b": np.array([True, False])}, str(tmp_path / "x"))
    back = conch.load(tmp_path / "x")
    assert set(back) == {"a", "b"} and back["a"].shape == (2, 3) and back["b"].dtype == conch.bool
    np.testing.assert_array_equal(_host(back["a"]), np.arange(6).reshape(2, 3))


def test_unsupported_objects_raise(tmp_path):
    with pytest.raises(TypeError, match="set"):
        conch.save({"a": {1, 2}}, tmp_path / "x")
    with pytest.raises(TypeError, match="keys"):
        conch.save({(1, 2): conch.ones(1)}, tmp_path / "x")
    with pytest.raises(ValueError, match="same name"):
        conch.save({"a.b": conch.ones(1), "a": {"b": conch.ones(1)}}, tmp_path / "x")
    assert not os.path.exists(tmp_path / "x")


def test_failed_save_keeps_old_file_and_leaves_no_temp(tmp_path, monkeypatch):
    path = tmp_path / "c.safetensors"
    conch.save({"v": conch.tensor([1.0])}, path)
    import conch.serialization as ser

    def boom(fd):
        raise OSError("disk full (simulated)")

    monkeypatch.setattr(ser.os, "fsync", boom)
    with pytest.raises(OSError, match="disk full"):
        conch.save({"v": conch.tensor([2.0])}, path)
    monkeypatch.undo()
    assert conch.load(path)["v"].tolist() == [1.0]
    assert os.listdir(tmp_path) == ["c.safetensors"]


# -------------------------------------------------------------------------------- corrupt and truncated files


@pytest.fixture
def good_file(tmp_path):
    path = tmp_path / "good.safetensors"
    conch.save({"w": conch.randn(64, 8), "step": 3}, path)
    return path


def _write(path, data):
    with open(path, "wb") as f:
        f.write(data)


@pytest.mark.parametrize("cut", [0, 5, 8, 40, -1, -100])
def test_truncated_file_raises_naming_it(good_file, tmp_path, cut):
    data = good_file.read_bytes()
    bad = tmp_path / "trunc.safetensors"
    _write(bad, data[:cut] if cut >= 0 else data[:cut])
    with pytest.raises(SerializationError, match="trunc.safetensors"):
        conch.load(bad)


def test_corrupt_header_raises(good_file, tmp_path):
    data = bytearray(good_file.read_bytes())
    (n,) = struct.unpack("<Q", data[:8])
    bad = tmp_path / "bad.safetensors"
    broken = data.copy()
    broken[8:12] = b"\xff\xfe{["
    _write(bad, bytes(broken))
    with pytest.raises(SerializationError, match="bad.safetensors.*header"):
        conch.load(bad)
    # a header that claims more bytes than the file has
    _write(bad, struct.pack("<Q", 10**12) + bytes(data[8:]))
    with pytest.raises(SerializationError, match="bad.safetensors"):
        conch.load(bad)
    # offsets that do not match the shape
    header = json.loads(bytes(data[8 : 8 + n]))
    header["w"]["data_offsets"][1] -= 4
    h = json.dumps(header).encode()
    _write(bad, struct.pack("<Q", len(h)) + h + bytes(data[8 + n :]))
    with pytest.raises(SerializationError, match="'w'"):
        conch.load(bad)
    # an unknown dtype
    header = json.loads(bytes(data[8 : 8 + n]))
    header["w"]["dtype"] = "F12"
    h = json.dumps(header).encode()
    _write(bad, struct.pack("<Q", len(h)) + h + bytes(data[8 + n :]))
    with pytest.raises(SerializationError, match="'w'"):
        conch.load(bad)


def test_random_bytes_and_missing_file(tmp_path):
    bad = tmp_path / "noise.bin"
    _write(bad, np.random.default_rng(0).integers(0, 256, 1000).astype(np.uint8).tobytes())
    with pytest.raises(SerializationError, match="noise.bin"):
        conch.load(bad)
    with pytest.raises(FileNotFoundError, match="nope"):
        conch.load(tmp_path / "nope.safetensors")


_SAVER = textwrap.dedent(
    """
    import sys
    import numpy as np
    import conch
    path = sys.argv[1]
    base = np.zeros((1024, 1024), np.float32)   # 4 MiB per tensor, 16 MiB per file
    i = 1
    while True:
        conch.save({"i": i, "a": [conch.from_numpy(base + i) for _ in range(4)]}, path)
        print(i, flush=True)
        i += 1
    """
)


def test_process_killed_mid_save_leaves_previous_file(tmp_path):
    path = tmp_path / "ckpt.safetensors"
    conch.save({"i": 0, "a": [conch.zeros(1024, 1024) for _ in range(4)]}, path)
    script = tmp_path / "saver.py"
    script.write_text(_SAVER)
    proc = subprocess.Popen([sys.executable, str(script), str(path)], stdout=subprocess.PIPE, text=True)
    try:
        first = proc.stdout.readline()  # one complete save, then kill while a later one is being written
        assert first.strip() == "1", first
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if any(n.startswith(".ckpt.safetensors.") for n in os.listdir(tmp_path)):
                break  # a temporary file exists: a save is in progress right now
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        proc.stdout.close()
    back = conch.load(path)  # must be one complete version, never a torn one
    i = back["i"]
    assert i >= 1
    for t in back["a"]:
        a = _host(t)
        assert a.shape == (1024, 1024) and a.min() == a.max() == float(i)
    # only hidden temporary files can be left behind by the killed writer
    assert all(
        n == "ckpt.safetensors" or n.startswith(".ckpt.safetensors.") or n == "saver.py" for n in os.listdir(tmp_path)
    )


def test_load_to_device(device, tmp_path):
    conch.save({"x": conch.ones(3)}, tmp_path / "x.safetensors")
    x = conch.load(tmp_path / "x.safetensors", device=device)["x"]
    assert x.device == device or str(x.device).startswith(device)


def test_model_state_dict_round_trip(tmp_path):
    nn = conch.nn
    if not hasattr(nn, "Linear"):
        pytest.skip("conch.nn.Linear is not available yet")
    m = nn.Linear(5, 3)
    conch.save(m.state_dict(), tmp_path / "m.safetensors")
    m2 = nn.Linear(5, 3)
    m2.load_state_dict(conch.load(tmp_path / "m.safetensors"))
    np.testing.assert_array_equal(_host(m2.weight), _host(m.weight))
