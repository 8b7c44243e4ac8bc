#!/usr/bin/env python3
"""Splits a file or directory into parts of bounded size, and joins them back: for moving a
training checkpoint (model + two AdamW moments in f32: 12 bytes per parameter) or a model
directory through channels that limit the size of each file.

  split SRC DST [--part-mib 15] [--name NAME]
      writes DST/NAME.tar.000, DST/NAME.tar.001, ... (an uncompressed tar of SRC cut into
      parts of at most --part-mib MiB) and DST/NAME.parts.json (part names, sizes, sha256 of
      each part and of the whole stream).
  join DST OUT [--name NAME]
      checks every part against NAME.parts.json and extracts the tar into OUT (SRC's base
      name appears inside OUT, as tar would give it).

NAME defaults to SRC's base name; `join` finds it when DST holds one *.parts.json.
Standard library only, so that it runs on any Python 3.
"""

import argparse
import glob
import hashlib
import json
import os
import sys
import tarfile

MIB = 1 << 20


class PartWriter:
    """A write-only file object that cuts its stream into numbered parts."""

    def __init__(self, dst, name, part_bytes):
        self.dst, self.name, self.part_bytes = dst, name, part_bytes
        self.parts, self.f, self.left = [], None, 0
        self.whole = hashlib.sha256()

    def _next(self):
        self._close_part()
        fn = f"{self.name}.tar.{len(self.parts):03d}"
        self.f = open(os.path.join(self.dst, fn), "wb")
        self.parts.append({"file": fn, "bytes": 0, "sha256": hashlib.sha256()})
        self.left = self.part_bytes

    def _close_part(self):
        if self.f:
            self.f.close()
            self.f = None

    def write(self, data):
        data = memoryview(data).cast("B")
        n_in = len(data)
        self.whole.update(data)
        while len(data):
            if self.left == 0:
                self._next()
            n = min(self.left, len(data))
            self.f.write(data[:n])
            p = self.parts[-1]
            p["bytes"] += n
            p["sha256"].update(data[:n])
            self.left -= n
            data = data[n:]
        return n_in

    def close(self):
        self._close_part()
        for p in self.parts:
            p["sha256"] = p["sha256"].hexdigest()


class PartReader:
    """A read-only file object over the concatenated parts, checking each part's sha256."""

    def __init__(self, dst, index):
        self.paths = [(os.path.join(dst, p["file"]), p) for p in index["parts"]]
        self.i, self.f, self.h = -1, None, None
        self.whole = hashlib.sha256()

    def read(self, n=-1):
        out = b""
        while n < 0 or len(out) < n:
            if self.f is None:
                self.i += 1
                if self.i >= len(self.paths):
                    break
                path, _ = self.paths[self.i]
                self.f, self.h = open(path, "rb"), hashlib.sha256()
            chunk = self.f.read(-1 if n < 0 else n - len(out))
            if not chunk:
                self._finish_part()
                continue
            self.h.update(chunk)
            self.whole.update(chunk)
            out += chunk
        return out

    def _finish_part(self):
        path, p = self.paths[self.i]
        self.f.close()
        self.f = None
        if self.h.hexdigest() != p["sha256"]:
            raise SystemExit(f"{path}: sha256 differs from the index (damaged part)")


def split(src, dst, part_mib, name=None):
    src = os.path.abspath(src)
    name = name or os.path.basename(src.rstrip("/"))
    os.makedirs(dst, exist_ok=True)
    for old in glob.glob(os.path.join(dst, f"{name}.tar.[0-9][0-9][0-9]")):
        os.remove(old)
    w = PartWriter(dst, name, int(part_mib * MIB))
    with tarfile.open(fileobj=w, mode="w|", format=tarfile.PAX_FORMAT) as tar:
        tar.add(src, arcname=os.path.basename(src.rstrip("/")))
    w.close()
    index = {"name": name, "source": os.path.basename(src.rstrip("/")),
             "bytes": sum(p["bytes"] for p in w.parts), "sha256": w.whole.hexdigest(),
             "parts": w.parts}
    with open(os.path.join(dst, f"{name}.parts.json"), "w") as f:
        json.dump(index, f, indent=1)
    print(f"split {src} -> {dst}/{name}.tar.000..{len(w.parts) - 1:03d} "
          f"({len(w.parts)} parts, {index['bytes'] / MIB:.1f} MiB)")
    return index


def join(dst, out, name=None):
    if name is None:
        found = glob.glob(os.path.join(dst, "*.parts.json"))
        if len(found) != 1:
            raise SystemExit(f"{dst}: {len(found)} *.parts.json files; give --name")
        path = found[0]
    else:
        path = os.path.join(dst, f"{name}.parts.json")
    with open(path) as f:
        index = json.load(f)
    for p in index["parts"]:
        fp = os.path.join(dst, p["file"])
        if not os.path.exists(fp) or os.path.getsize(fp) != p["bytes"]:
            raise SystemExit(f"{fp}: missing or of the wrong size")
    os.makedirs(out, exist_ok=True)
    r = PartReader(dst, index)
    with tarfile.open(fileobj=r, mode="r|") as tar:
        for member in tar:
            if member.name.startswith("/") or ".." in member.name.split("/"):
                raise SystemExit(f"refusing to extract {member.name}")
            tar.extract(member, out)
    r.read()   # drain: the tar end may leave padding unread
    if r.whole.hexdigest() != index["sha256"]:
        raise SystemExit("the joined stream's sha256 differs from the index")
    dest = os.path.join(out, index["source"])
    print(f"joined {len(index['parts'])} parts -> {dest}")
    return dest


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("split")
    p.add_argument("src")
    p.add_argument("dst")
    p.add_argument("--part-mib", type=float, default=15.0)
    p.add_argument("--name")
    p = sub.add_parser("join")
    p.add_argument("dst")
    p.add_argument("out")
    p.add_argument("--name")
    a = ap.parse_args(argv)
    if a.cmd == "split":
        split(a.src, a.dst, a.part_mib, a.name)
    else:
        join(a.dst, a.out, a.name)


if __name__ == "__main__":
    sys.exit(main())
