#!/usr/bin/env python3
"""Writes the seed corpus of the hostile_cqes fuzz target (fuzz/corpus/hostile_cqes/).

The input format is decoded by crates/bufring/src/model/hostile.rs:
header: count-1 (u8), buf_len (u16 le, taken % 4096, +1), incremental (u8 & 1);
then ops: 0-3 completion: mode (u8), flags (u32 le, low 16 bits), bid (u16 le),
res (mode>>1&3 == 0: u16 le % (buf_len+2); 1: -(u8 % 128); else i32 le);
4 drop: index (u16), on a thread (u8 & 1); 5 split: index (u16), at (u16), split_off (u8 & 1);
6 merge: index (u16), into (u16); 7 publish.
"""
import os
import struct

F_BUFFER, F_MORE, F_BUF_MORE = 1, 2, 16
ENOBUFS = 105


def header(count, buf_len, inc):
    return struct.pack("<BHB", count - 1, buf_len - 1, 1 if inc else 0)


def cqe(res, bid=None, flags=0, near=True):
    if bid is not None:
        flags |= F_BUFFER
    bid = bid or 0
    if 0 <= res < 65536:
        mode, tail = 0, struct.pack("<H", res)
    elif -128 < res < 0:
        mode, tail = 1 << 1, struct.pack("<B", -res)
    else:
        mode, tail = 2 << 1, struct.pack("<i", res)
    mode |= 0 if near else 1
    return bytes([0, mode]) + struct.pack("<IH", flags, bid) + tail


def drop(i, thread=False):
    return bytes([4]) + struct.pack("<HB", i, 1 if thread else 0)


def split(i, at, off=False):
    return bytes([5]) + struct.pack("<HHB", i, at, 1 if off else 0)


def merge(i, j):
    return bytes([6]) + struct.pack("<HH", i, j)


PUBLISH = bytes([7])

seeds = {
    "classic_in_order": header(4, 100, False)
    + cqe(50, 0, F_MORE) + cqe(100, 1, F_MORE) + drop(0) + PUBLISH + cqe(10, 2, F_MORE)
    + drop(0, True) + drop(0) + PUBLISH + cqe(100, 0, F_MORE) + cqe(0) + PUBLISH,
    "incremental_fill": header(2, 1000, True)
    + cqe(100, 0, F_MORE | F_BUF_MORE) + cqe(200, 0, F_MORE | F_BUF_MORE)
    + cqe(700, 0, F_MORE) + split(0, 50) + split(2, 10, True) + merge(0, 1)
    + drop(0, True) + drop(0) + PUBLISH + drop(0) + drop(0) + PUBLISH
    + cqe(1000, 1, F_MORE) + cqe(0, 0, F_BUF_MORE) + PUBLISH,
    "errors_without_buffer": header(3, 64, False)
    + cqe(-ENOBUFS) + cqe(0) + cqe(-104) + cqe(5) + cqe(-2**31) + cqe(2**31 - 1),
    "hostile_bids": header(2, 64, False)
    + cqe(10, 7, F_MORE, near=False) + cqe(65, 0) + cqe(1, 1, F_BUF_MORE)
    + cqe(10, 0) + cqe(10, 0) + PUBLISH + drop(0) + PUBLISH + cqe(64, 0),
    "incremental_hostile": header(1, 16, True)
    + cqe(8, 0, F_BUF_MORE) + cqe(9, 0, F_BUF_MORE) + cqe(-1, 0, F_BUF_MORE)
    + cqe(0, 0) + cqe(8, 0) + split(0, 4) + PUBLISH + drop(1) + drop(0) + PUBLISH,
}

out = os.path.join(os.path.dirname(os.path.abspath(__file__)), "corpus", "hostile_cqes")
os.makedirs(out, exist_ok=True)
for name, data in seeds.items():
    with open(os.path.join(out, name), "wb") as f:
        f.write(data)
print(f"{len(seeds)} seeds in {out}")
