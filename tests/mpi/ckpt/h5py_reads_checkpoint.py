#!/usr/bin/python3
"""A dnpo checkpoint is plain HDF5: h5py (no dnpo code) sees the full tensors with the demo values
(tests/common/ckpt_test_util.h), the attributes and blobs, and the per-chunk CRC-32s of
/checksums match zlib.crc32 of the stored bytes. Usage: h5py_reads_checkpoint.py FILE.h5"""
import sys
import zlib

import h5py
import numpy as np


def check(cond, msg=""):
    """Raises AssertionError(msg) unless cond: an assert that `python -O` keeps."""
    if not cond:
        raise AssertionError(msg)


# name, shape, dtype in the order of ckpt_demo_specs(); k = position.
SPECS = [("model.embed_tokens.weight", (3, 700001), np.float32),
         ("model.layers.3.q_proj.weight", (64, 64), np.float32),
         ("noise.w", (7, 5, 3), np.float32),
         ("opt.step", (), np.int64),
         ("empty", (0, 4), np.float32),
         ("data.cursor", (1000,), np.int64),
         ("big.exact_chunks", (2, 1048576), np.float32)]


def expected(k, shape, dtype):
    index = np.arange(int(np.prod(shape)), dtype=np.int64)
    if dtype == np.int64:
        return (index * 3 + k).reshape(shape)
    return (index.astype(np.float32) + np.float32(0.25 * k)).reshape(shape)


def main(path):
    with h5py.File(path, "r") as f:
        check(f.attrs["format_version"] == 1, dict(f.attrs))
        check(f.attrs["world_size"] == 2, dict(f.attrs))
        chunk = int(f.attrs["chunk_elems"])
        check(list(f["tensors"].keys()) == [s[0] for s in SPECS], list(f["tensors"].keys()))
        for k, (name, shape, dtype) in enumerate(SPECS):
            data = f["tensors"][name][()]
            check(data.shape == shape and data.dtype == dtype, (name, data.shape, data.dtype))
            check(np.array_equal(data, expected(k, shape, dtype)), f"{name}: values differ")
            raw = np.ascontiguousarray(data).reshape(-1).view(np.uint8)
            step = chunk * data.dtype.itemsize
            crcs = [zlib.crc32(raw[i:i + step].tobytes()) for i in range(0, raw.size, step)]
            stored = [int(c) for c in f["checksums"][name][()]]
            check(stored == crcs, f"{name}: stored CRCs {stored} != zlib {crcs}")
        attrs = f["attributes"].attrs
        check(attrs["step"] == 120 and attrs["phase"] == b"train", dict(attrs))
        check(abs(attrs["loss"] - 0.6123) < 1e-12, dict(attrs))
        prompts = f["blobs"]["prompts.json"][()].tobytes()
        check(prompts == b'[{"id": 1, "prompt": "hi"}]', prompts)
        check(zlib.crc32(prompts) == f["blobs"]["prompts.json"].attrs["crc32"])
    print(f"h5py reads {path}: {len(SPECS)} tensors, values and checksums as expected")


if __name__ == "__main__":
    main(sys.argv[1])
