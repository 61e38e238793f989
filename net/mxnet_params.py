"""MXNet's NDArray-list file format (what mx.nd.save writes, as PSA's and SEAM's ImageNet ResNet-38 weights
ilsvrc-cls_rna-a1_cls1000_ep-0001.params), read with NumPy alone: no mxnet needed."""
import os
import struct

import numpy as np

from misc.pyutils import UserError

MX_LIST_MAGIC = 0x112  # kMXAPINDArrayListMagic: header of a file written by mx.nd.save
MX_V1_MAGIC = 0xF993FAC8  # NDArray: int64 shape
MX_V2_MAGIC = 0xF993FAC9  # NDArray: + storage type
MX_V3_MAGIC = 0xF993FACA  # NDArray: V2 with NumPy shape semantics (ndim -1 = unknown)
# mshadow type flags
MX_DTYPES = {0: np.float32, 1: np.float64, 2: np.float16, 3: np.uint8, 4: np.int32, 5: np.int8, 6: np.int64}


class _Reader:
    def __init__(self, buf, path):
        self.buf, self.pos, self.path = buf, 0, path

    def take(self, fmt):
        size = struct.calcsize(fmt)
        if self.pos + size > len(self.buf):
            raise UserError(f"{self.path} is truncated (an MXNet .params file ends early); download it again")
        vals = struct.unpack_from(fmt, self.buf, self.pos)
        self.pos += size
        return vals

    def array(self, dtype, shape):
        count = int(np.prod(shape, dtype=np.int64))
        size = count * np.dtype(dtype).itemsize
        if self.pos + size > len(self.buf):
            raise UserError(f"{self.path} is truncated (an MXNet .params file ends early); download it again")
        out = np.frombuffer(self.buf, dtype=np.dtype(dtype).newbyteorder("<"), count=count, offset=self.pos)
        self.pos += size
        return out.reshape(shape).copy()


def _read_ndarray(r):
    """One NDArray as MXNet's NDArray::Save writes it (src/ndarray/ndarray.cc), dense CPU arrays only."""
    (magic,) = r.take("<I")
    if magic in (MX_V2_MAGIC, MX_V3_MAGIC):
        (stype,) = r.take("<i")
        if stype != 0:
            raise UserError(f"{r.path}: sparse MXNet arrays are not supported; save the weights as dense arrays")
        (ndim,) = r.take("<i")
        if ndim <= 0:  # V2: 0 = empty array; V3: -1 = unknown shape; nothing else is stored then
            return None
        shape = r.take(f"<{ndim}q")
    elif magic == MX_V1_MAGIC:
        (ndim,) = r.take("<I")
        shape = r.take(f"<{ndim}q")
    else:  # legacy: the word just read is ndim itself, followed by uint32 dims
        ndim = magic
        if ndim > 32:
            raise UserError(f"{r.path} is not an MXNet .params file (bad array header); download it again")
        shape = r.take(f"<{ndim}I")
    if ndim == 0:
        return None
    r.take("<ii")  # context: dev_type, dev_id (arrays are always loaded to the CPU)
    (type_flag,) = r.take("<i")
    if type_flag not in MX_DTYPES:
        raise UserError(f"{r.path}: unknown MXNet dtype flag {type_flag}")
    return r.array(MX_DTYPES[type_flag], tuple(shape))


def read_mxnet_params(path):
    """{name: numpy array} of an MXNet NDArray-list file (mx.nd.save / Module.save_params), in file
    order, names as stored (e.g. 'arg:res2a_branch1_weight', 'aux:bn7_moving_var')."""
    if not os.path.isfile(path):
        raise UserError(f"MXNet weights not found: {path}; check the path")
    with open(path, "rb") as f:
        buf = f.read()
    r = _Reader(buf, path)
    magic, _reserved = r.take("<QQ")
    if magic != MX_LIST_MAGIC:
        raise UserError(f"{path} is not an MXNet .params file (magic {magic:#x}, expected 0x112); "
                        f"download it again or pass a .pth state dict")
    (n_arrays,) = r.take("<Q")
    arrays = [_read_ndarray(r) for _ in range(n_arrays)]
    (n_names,) = r.take("<Q")
    names = []
    for _ in range(n_names):
        (length,) = r.take("<Q")
        names.append(bytes(r.array(np.uint8, (length,))).decode("utf-8"))
    if n_names != n_arrays:
        raise UserError(f"{path}: {n_arrays} arrays but {n_names} names; it is not a named weights file")
    return dict(zip(names, arrays))
