"""conch.save / conch.load: safetensors round trips, interoperability, atomic writes, corrupt files."""

import json
import os
import re
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


# -------------------------------------------------------------------------------- malformed headers (fuzzer findings)
# Each file is built by hand: an 8-byte length, the JSON header exactly as given, the data. The safetensors
# library rejects all of them (conch used to read some silently, with the wrong bytes or shapes, and crash on
# others with ValueError/OverflowError/RecursionError); duplicate keys conch rejects on its own.


def _st_file(path, header, data=b""):
    """Write a safetensors file whose header is ``header`` (a dict, or raw JSON bytes kept as they are)."""
    h = header if isinstance(header, bytes) else json.dumps(header).encode()
    _write(path, struct.pack("<Q", len(h)) + h + data)
    return path


def _f32(shape, offsets):
    return {"dtype": "F32", "shape": shape, "data_offsets": offsets}


_DUP = b'{"a":{"dtype":"F32","shape":[3],"data_offsets":[0,12]},"b":{"dtype":"F32","shape":[3],"data_offsets":[12,24]}'
_MALFORMED = {
    # offsets shifted by 4: the old reader read bytes 4..16 as "a"
    "shifted_offsets": ({"a": _f32([3], [4, 16]), "b": _f32([3], [16, 28])}, 28, r"offset.*`a`"),
    "overlapping_offsets": ({"a": _f32([3], [0, 12]), "b": _f32([3], [0, 12])}, 12, r"offset.*`[ab]`"),
    "gap_between_tensors": ({"a": _f32([1], [0, 4]), "b": _f32([1], [8, 12])}, 12, r"offset.*`b`"),
    # a second "a" identical to the first (the safetensors library keeps the last silently) or different
    "duplicate_key_same": (_DUP + b',"a":{"dtype":"F32","shape":[3],"data_offsets":[0,12]}}', 24, "duplicate key 'a'"),
    "duplicate_key_other": (_DUP + b',"a":{"dtype":"F32","shape":[3],"data_offsets":[12,24]}}', 24, "offset.*`[ab]`"),
    "shape_true_15": ({"a": _f32([True, 15], [0, 60])}, 60, "boolean"),
    "shape_string_53": ({"a": _f32("53", [0, 60])}, 60, "string"),
    "metadata_not_a_dict": ({"__metadata__": [1], "a": _f32([3], [0, 12])}, 12, "expected a map"),
    "metadata_value_not_str": ({"__metadata__": {"conch": 1}, "a": _f32([3], [0, 12])}, 12, "expected a string"),
    "negative_shape": ({"a": _f32([-5, -3], [0, 60])}, 60, "-5"),
    "shape_2_pow_64": ({"a": _f32([2**64, 1], [0, 4])}, 4, "expected usize"),
    "shape_overflows": ({"a": _f32([2**62, 4], [0, 16])}, 16, r"overflow.*'a'"),
    "size_mismatch": ({"a": _f32([3], [0, 8])}, 8, r"'a'.*needs 12 bytes"),
    "unknown_dtype": ({"a": {"dtype": "F12", "shape": [3], "data_offsets": [0, 12]}}, 12, r"F12.*'a'"),
    "dtype_conch_lacks": ({"a": {"dtype": "F8_E4M3", "shape": [3], "data_offsets": [0, 3]}}, 3, r"'a'.*F8_E4M3"),
    "deeply_nested_json": (b'{"a":' + b"[" * 100_000 + b"]" * 100_000 + b"}", 0, "header"),
    "nan_in_header": (b'{"a":{"dtype":"F32","shape":[3],"data_offsets":[0,12]},"x":NaN}', 12, "header"),
    "not_an_object": (b"[1, 2]", 0, "header"),
    "data_truncated": ({"a": _f32([3], [0, 12])}, 8, "truncated"),
    "data_extended": ({"a": _f32([3], [0, 12])}, 16, "extended"),
}


@pytest.mark.parametrize("case", list(_MALFORMED))
def test_malformed_header_raises_serialization_error(tmp_path, case):
    header, ndata, problem = _MALFORMED[case]
    path = _st_file(tmp_path / f"{case}.safetensors", header, bytes(range(256)) * (ndata // 256) + bytes(ndata % 256))
    with pytest.raises(SerializationError, match=case) as info:
        conch.load(path)
    assert re.search(problem, str(info.value)), str(info.value)


def test_deeply_nested_structure_metadata_raises(tmp_path):
    # a pre-checksum file (nothing to verify) whose conch skeleton nests beyond Python's recursion limit
    skel = '{"L":[' * 50_000 + "]}" * 50_000
    path = _st_file(tmp_path / "nested.safetensors", {"__metadata__": {"format": "pt", "conch": skel}})
    with pytest.raises(SerializationError, match="nested.safetensors.*structure"):
        conch.load(path)


def test_files_without_checksums_still_load(tmp_path):
    # what conch wrote before it stored checksums: the skeleton only
    skel = json.dumps({"D": [["w", {"T": "w"}], ["lr", {"V": 0.5}]]})
    data = np.arange(3, dtype=np.float32).tobytes()
    path = _st_file(tmp_path / "old.safetensors", {"w": _f32([3], [0, 12]), "__metadata__": {"conch": skel}}, data)
    back = conch.load(path)
    assert back["lr"] == 0.5 and back["w"].tolist() == [0.0, 1.0, 2.0]


# -------------------------------------------------------------------------------- checksums


@pytest.fixture
def ckpt_file(tmp_path):
    path = tmp_path / "ck.safetensors"
    w = np.arange(64, dtype=np.float32)
    conch.save({"w": conch.tensor(w), "b": conch.zeros(2), "betas": (0.9, 0.999), "step": 7}, path)
    return path, w


def test_checksums_are_stored_per_tensor_and_for_the_metadata(ckpt_file):
    from safetensors import safe_open

    with safe_open(str(ckpt_file[0]), framework="numpy") as f:
        meta = f.metadata()
    assert meta["conch.checksum"] == "crc32"
    assert set(json.loads(meta["conch.tensor_checksums"])) == {"w", "b"}
    assert len(meta["conch.metadata_checksum"]) == 8


def test_flipped_data_byte_raises_naming_the_tensor(ckpt_file):
    path, w = ckpt_file
    data = bytearray(path.read_bytes())
    data[-20] ^= 0x01  # inside "w": data in insertion order, "w" (256 bytes) then "b" (8 bytes)
    path.write_bytes(bytes(data))
    with pytest.raises(SerializationError, match=r"ck.safetensors.*checksum mismatch in tensor 'w'.*\[64\]"):
        conch.load(path)
    back = conch.load(path, verify=False)  # the fast path reads what is there
    assert (back["w"].numpy() != w).sum() == 1


def test_flipped_metadata_byte_raises(ckpt_file):
    path, _ = ckpt_file
    data = path.read_bytes()
    assert data.count(b":0.9}") == 1
    path.write_bytes(data.replace(b":0.9}", b":1.9}"))  # betas (0.9, 0.999) -> (1.9, 0.999): still valid JSON
    with pytest.raises(SerializationError, match="ck.safetensors.*metadata checksum mismatch"):
        conch.load(path)
    assert conch.load(path, verify=False)["betas"] == (1.9, 0.999)


def test_flipped_dtype_and_name_raise(ckpt_file):
    path, _ = ckpt_file
    data = path.read_bytes()
    # "F32" -> "I32": the same size, so only the checksum (which covers dtype and shape) can tell
    path.write_bytes(data.replace(b'"w":{"dtype":"F32"', b'"w":{"dtype":"I32"'))
    with pytest.raises(SerializationError, match="tensor 'w'"):
        conch.load(path)
    path.write_bytes(data.replace(b'"w":{"dtype"', b'"v":{"dtype"'))  # a corrupt tensor name
    with pytest.raises(SerializationError, match=r"ck.safetensors.*unexpected \['v'\], missing \['w'\]"):
        conch.load(path)


def test_unknown_checksum_algorithm(ckpt_file):
    path, _ = ckpt_file
    data = path.read_bytes()
    path.write_bytes(data.replace(b'"conch.checksum":"crc32"', b'"conch.checksum":"crc64"'))
    with pytest.raises(SerializationError, match="crc64.*verify=False"):
        conch.load(path)
    assert conch.load(path, verify=False)["step"] == 7


# -------------------------------------------------------------------------------- stale temporary files


def _dead_pid():
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid  # reaped: no process has this pid until the kernel reuses it


def test_next_save_removes_stale_temps_of_dead_writers_only(tmp_path):
    import conch.serialization as ser

    host, dead, old, ancient = ser._HOST, _dead_pid(), time.time() - 120, time.time() - 3 * 86400
    files = {  # name -> (mtime, removed?)
        f".c.safetensors.conch-tmp.{host}.{dead}.ab_cd123.tmp": (old, True),  # a killed save
        f".other.bin.conch-tmp.{host}.{dead}.zz999999.tmp": (old, True),  # another file's killed save
        f".c.safetensors.conch-tmp.{host}.{dead}.fresh000.tmp": (time.time(), False),  # written seconds ago
        f".c.safetensors.conch-tmp.{host}.{os.getpid()}.alive000.tmp": (old, False),  # a live writer
        f".c.safetensors.conch-tmp.otherhost.{dead}.remote00.tmp": (old, False),  # maybe alive elsewhere
        f".c.safetensors.conch-tmp.otherhost.{dead}.remote11.tmp": (ancient, True),  # no save takes days
        ".c.safetensors.abcd1234.tmp": (ancient, False),  # not conch's name: never touched
        "notes.conch-tmp.txt": (ancient, False),
        f"c.safetensors.conch-tmp.{host}.{dead}.nodot000.tmp": (ancient, False),
    }
    for name, (mtime, _) in files.items():
        (tmp_path / name).write_bytes(b"x" * 10)
        os.utime(tmp_path / name, (mtime, mtime))
    (tmp_path / f".d.conch-tmp.{host}.{dead}.adir0000.tmp").mkdir()  # a folder with the name: left alone
    conch.save({"v": conch.ones(1)}, tmp_path / "c.safetensors")
    left = set(os.listdir(tmp_path))
    for name, (_, removed) in files.items():
        assert (name not in left) == removed, name
    assert f".d.conch-tmp.{host}.{dead}.adir0000.tmp" in left and "c.safetensors" in left


def test_killed_save_leftover_removed_by_next_save(tmp_path):
    path = tmp_path / "ckpt.safetensors"
    script = tmp_path / "saver.py"
    script.write_text(_SAVER)
    proc = subprocess.Popen([sys.executable, str(script), str(path)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "1"
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not [n for n in os.listdir(tmp_path) if ".conch-tmp." in n]:
            pass
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        proc.stdout.close()
    temps = [n for n in os.listdir(tmp_path) if ".conch-tmp." in n]
    assert all(f".{proc.pid}." in n for n in temps)
    for n in temps:  # past the grace period that guards writers in other pid namespaces
        os.utime(tmp_path / n, (time.time() - 120, time.time() - 120))
    conch.save({"i": 0}, path)
    assert sorted(os.listdir(tmp_path)) == ["ckpt.safetensors", "saver.py"]


def test_long_file_name(tmp_path):
    path = tmp_path / ("x" * 200 + ".safetensors")  # the temporary file's longer name must still be legal
    conch.save({"v": conch.ones(1)}, path)
    assert conch.load(path)["v"].tolist() == [1.0] and os.listdir(tmp_path) == [path.name]


def test_saved_file_gets_the_umask_default_mode_not_0600(tmp_path):
    # mkstemp's 0600 must not leak: a checkpoint is created as open() would create it
    old = os.umask(0o022)
    try:
        conch.save({"w": conch.zeros(2)}, tmp_path / "a.safetensors")
        os.umask(0o027)
        conch.save({"w": conch.zeros(2)}, tmp_path / "b.safetensors")
    finally:
        os.umask(old)
    assert (tmp_path / "a.safetensors").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "b.safetensors").stat().st_mode & 0o777 == 0o640
