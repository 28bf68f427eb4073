"""Minimal safetensors writer and reader for the golden-data scripts (F32 and I64 only).

Format: 8-byte little-endian header length N, N bytes of JSON header (padded with spaces to a
multiple of 8), then the raw little-endian tensor data. No dependency beyond torch and numpy.
"""

import json
import struct

import numpy as np
import torch

_DTYPES = {
    torch.float32: ("F32", np.dtype("<f4")),
    torch.int64: ("I64", np.dtype("<i8")),
}
_NP_BY_NAME = {name: np_dtype for name, np_dtype in _DTYPES.values()}


def check(cond, msg=""):
    """Raises AssertionError(msg) unless cond: an assert that `python -O` keeps."""
    if not cond:
        raise AssertionError(msg)


def save_file(tensors, path):
    """Writes a dict name -> tensor (float32 or int64, any shape) to `path`, names sorted."""
    header = {"__metadata__": {"format": "pt"}}
    blobs = []
    offset = 0
    for name in sorted(tensors):
        t = tensors[name]
        if t.dtype not in _DTYPES:
            raise TypeError(f"{name}: dtype {t.dtype} not supported; expected float32 or int64")
        st_name, np_dtype = _DTYPES[t.dtype]
        data = t.detach().cpu().contiguous().numpy().astype(np_dtype, copy=False).tobytes()
        header[name] = {
            "dtype": st_name,
            "shape": list(t.shape),
            "data_offsets": [offset, offset + len(data)],
        }
        blobs.append(data)
        offset += len(data)
    raw = json.dumps(header, separators=(",", ":")).encode("utf-8")
    raw += b" " * ((8 - len(raw) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)))
        f.write(raw)
        for data in blobs:
            f.write(data)


def load_file(path):
    """Reads a safetensors file (F32, I64, BF16) by the format's spec; returns dict name ->
    torch tensor (BF16 comes back as float32 holding the same values)."""
    with open(path, "rb") as f:
        buf = f.read()
    (n,) = struct.unpack("<Q", buf[:8])
    header = json.loads(buf[8 : 8 + n].decode("utf-8"))
    base = 8 + n
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        begin, end = info["data_offsets"]
        raw = buf[base + begin : base + end]
        if info["dtype"] == "BF16":  # the high half of a float32: widen by a 16-bit shift
            halves = np.frombuffer(raw, dtype="<u2").astype(np.uint32) << 16
            arr = halves.view(np.float32).copy()
        else:
            arr = np.frombuffer(raw, dtype=_NP_BY_NAME[info["dtype"]]).copy()
        out[name] = torch.from_numpy(arr.reshape(info["shape"]))
    return out


def load_dir(path):
    """The tensors of an HF model directory: model.safetensors, or the shards that
    model.safetensors.index.json maps each tensor to (checking every mapped tensor is there)."""
    import os

    index_path = os.path.join(path, "model.safetensors.index.json")
    if not os.path.exists(index_path):
        return load_file(os.path.join(path, "model.safetensors"))
    with open(index_path) as f:
        weight_map = json.load(f)["weight_map"]
    out = {}
    for file in sorted(set(weight_map.values())):
        out.update(load_file(os.path.join(path, file)))
    missing = [name for name in weight_map if name not in out]
    check(not missing, f"{path}: tensors in the index but in no shard: {missing}")
    return out


def _self_test():
    import tempfile, os

    t = {"a": torch.randn(3, 4), "b": torch.arange(5, dtype=torch.int64), "s": torch.tensor([1.5])}
    with tempfile.TemporaryDirectory() as d:
        p = os.path.join(d, "x.safetensors")
        save_file(t, p)
        back = load_file(p)
        for k, v in t.items():
            check(back[k].dtype == v.dtype and torch.equal(back[k], v), k)
        with open(p, "rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
        check(n % 8 == 0)
    print("safetensors_io self-test ok")


if __name__ == "__main__":
    _self_test()
