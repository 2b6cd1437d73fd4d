"""Reads and writes quartic checkpoints (the format of src/train/checkpoint.rs) with the
standard library only: the scripts beside this one import it.
"""
import array
import json
import os
import struct
import sys
import zlib

FORMAT = "quartic-checkpoint-2"


def read(path):
    with open(path, "rb") as f:
        data = f.read()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + n])
    meta = header.pop("__metadata__")
    if meta.get("format") != FORMAT:
        sys.exit(f"{path}: format {meta.get('format')!r}, expected {FORMAT!r}")
    body = data[8 + n :]
    tensors = {}
    for name, t in header.items():
        if t["dtype"] != "F32":
            sys.exit(f"{path}: tensor {name} is {t['dtype']}, expected F32")
        a, b = t["data_offsets"]
        values = array.array("f")
        values.frombytes(body[a:b])
        if sys.byteorder != "little":
            values.byteswap()
        tensors[name] = (t["shape"], values)
    return meta, tensors


def metadata_crc(meta):
    # the CRC-32 of every entry but the checksums, in key order, each part ended by a zero byte
    crc = 0
    for key in sorted(k for k in meta if k != "checksums"):
        for part in (key.encode(), b"\0", meta[key].encode(), b"\0"):
            crc = zlib.crc32(part, crc)
    return crc


def write(path, meta, tensors):
    blobs = {}
    for name, (shape, values) in tensors.items():
        v = array.array("f", values)
        if sys.byteorder != "little":
            v.byteswap()
        blobs[name] = (shape, v.tobytes())
    sums = {name: zlib.crc32(b) for name, (_, b) in blobs.items()}
    sums["__metadata__"] = metadata_crc(meta)
    meta = dict(meta, checksums=json.dumps(sums, sort_keys=True, separators=(",", ":")))
    header, offset, body = {"__metadata__": meta}, 0, []
    for name in sorted(blobs):
        shape, b = blobs[name]
        header[name] = {"dtype": "F32", "shape": shape, "data_offsets": [offset, offset + len(b)]}
        offset += len(b)
        body.append(b)
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    if os.path.exists(path):
        sys.exit(f"{path} exists; not replacing it")
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)) + text + b"".join(body))


def write_start(path, meta, params, config=None):
    """`params` as a fresh start for `quartic train --init`: the source's metadata (the model,
    its rule's source, the build it came from) at step 0, with `config` in place of the model's
    settings where given, and no optimizer moments."""
    train = json.loads(meta["train"])
    start = dict(meta)
    if config is not None:
        start["config"] = json.dumps(config, separators=(",", ":"))
    start["train"] = json.dumps({"step": 0, "train_config": train["train_config"]})
    start["adam_step"] = "0"
    write(path, start, params)
