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
    """Reads a safetensors file written as above; returns dict name -> torch tensor."""
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
        np_dtype = _NP_BY_NAME[info["dtype"]]
        arr = np.frombuffer(buf[base + begin : base + end], dtype=np_dtype).copy()
        out[name] = torch.from_numpy(arr.reshape(info["shape"]))
    return out


def _self_test():
    import tempfile, os

    t = {"a": torch.randn(3, 4), "b": torch.arange(5, dtype=torch.int64), "s": torch.tensor([1.5])}
    with tempfile.TemporaryDirectory() as d:
        p = os.path.join(d, "x.safetensors")
        save_file(t, p)
        back = load_file(p)
        for k, v in t.items():
            assert back[k].dtype == v.dtype and torch.equal(back[k], v), k
        with open(p, "rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
        assert n % 8 == 0
    print("safetensors_io self-test ok")


if __name__ == "__main__":
    _self_test()
