#!/usr/bin/env python3
"""Writes valid starting inputs into corpus/<target>/ so the fuzzers begin past the
checksum and length checks that random bytes almost never pass. Run from this directory
before `cargo fuzz run`; the corpus itself is not committed."""
import os, struct

def csum(b, acc=0):
    if len(b) % 2:
        b += b"\0"
    for i in range(0, len(b), 2):
        acc += (b[i] << 8) | b[i + 1]
    while acc > 0xFFFF:
        acc = (acc & 0xFFFF) + (acc >> 16)
    return acc

SRC4, DST4 = bytes([10, 244, 1, 5]), bytes([10, 244, 2, 7])
SRC6 = bytes.fromhex("fd000000000000010000000000000005")
DST6 = bytes.fromhex("fd000000000000020000000000000007")
OPTS = bytes([1, 1, 8, 10, 0, 0, 0, 1, 0, 0, 0, 2])

def packet(v6, payload, seq=1000, flags=0x10, partial=False, proto=6):
    if proto == 6:
        l4 = struct.pack("!HHIIBBHHH", 40000, 5201, seq, 0x01020304, (32 // 4) << 4, flags, 502, 0, 0) + OPTS
    else:
        l4 = struct.pack("!HHHH", 8080, 8541, 8 + len(payload), 0)
    seg = l4 + payload
    src, dst = (SRC6, DST6) if v6 else (SRC4, DST4)
    pseudo = csum(src + dst, proto + len(seg))
    c = pseudo if partial else (~csum(seg, pseudo)) & 0xFFFF
    off = 16 if proto == 6 else 6
    seg = seg[:off] + struct.pack("!H", c) + seg[off + 2:]
    if v6:
        ip = struct.pack("!IHBB", 0x60000000, len(seg), proto, 64) + src + dst
    else:
        ip = struct.pack("!BBHHHBBH", 0x45, 0, 20 + len(seg), 0x1234, 0x4000, 64, proto, 0) + src + dst
        ip = ip[:10] + struct.pack("!H", (~csum(ip)) & 0xFFFF) + ip[12:]
    return ip + seg

def vnet(flags, gso_type, hdr_len, gso_size, csum_start, csum_offset):
    return struct.pack("<BBHHHH", flags, gso_type, hdr_len, gso_size, csum_start, csum_offset)

def write(target, name, data):
    os.makedirs(f"corpus/{target}", exist_ok=True)
    with open(f"corpus/{target}/seed-{name}", "wb") as f:
        f.write(data)

data = bytes(range(256)) * 12
for v6 in (False, True):
    fam = "v6" if v6 else "v4"
    l4 = 40 if v6 else 20
    write("inspect", fam, packet(v6, data[:100]))
    write("segment", fam + "-tso", vnet(1, 4 if v6 else 1, l4 + 32, 1000, l4, 16) + packet(v6, data[:3000], flags=0x18, partial=True))
    write("segment", fam + "-uso", vnet(1, 5, l4 + 8, 1000, l4, 6) + packet(v6, data[:2500], proto=17, partial=True))
    write("segment", fam + "-csum", vnet(1, 0, 0, 0, l4, 16) + packet(v6, data[:300], partial=True))
    batch = b""
    for i in range(4):
        p = packet(v6, data[i * 500:(i + 1) * 500], seq=1000 + 500 * i, flags=0x18 if i == 3 else 0x10)
        batch += struct.pack("!H", len(p)) + p
    write("gro", fam, b"\x03" + batch)
