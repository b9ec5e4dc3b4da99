"""Compare two results trees output by output (a refactor must leave them identical).

Every zarr array (values) and group / array attributes, every parquet table (pandas, exact), JSON,
TSV / CSV / text file, checkpoint (tensors and stored spec; optimizer state tensors) and PNG (bytes);
keys and columns that hold timings, hosts, pids or versions are left out (``TIMING``). Prints how many
items are identical and one ``DIFF`` line per difference; exits 1 when anything differs.

    python tools/compare_results.py BEFORE/results AFTER/results
"""

import json
import re
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import zarr

A, B = Path(sys.argv[1]), Path(sys.argv[2])
TIMING = re.compile(r"second|time|elapsed|date|host|version|_at$|pid|duration|wall", re.IGNORECASE)
diffs, same = [], 0


def clean(o):
    if isinstance(o, dict):
        return {k: clean(v) for k, v in o.items() if not TIMING.search(str(k))}
    if isinstance(o, list):
        return [clean(v) for v in o]
    return o


def eq_json(a, b):
    return json.dumps(clean(a), sort_keys=True, default=str) == json.dumps(clean(b), sort_keys=True, default=str)


files_a = {p.relative_to(A) for p in A.rglob("*") if p.is_file()}
files_b = {p.relative_to(B) for p in B.rglob("*") if p.is_file()}
if files_a != files_b:
    diffs.append(
        f"file sets differ: only before {sorted(map(str, files_a - files_b))[:10]}, only after {sorted(map(str, files_b - files_a))[:10]}"
    )
stores = sorted({p for p in A.rglob("*.zarr") if p.is_dir() and (p / "zarr.json").is_file()})
for s in stores:
    ga, gb = zarr.open_group(s, mode="r"), zarr.open_group(B / s.relative_to(A), mode="r")

    def walk(g, prefix=""):
        yield prefix, g
        for name, child in g.members():
            yield from (
                walk(child, f"{prefix}/{name}") if isinstance(child, zarr.Group) else [(f"{prefix}/{name}", child)]
            )

    ma, mb = dict(walk(ga)), dict(walk(gb))
    if set(ma) != set(mb):
        diffs.append(f"{s}: members differ")
        continue
    for k, x in ma.items():
        y = mb[k]
        if not eq_json(dict(x.attrs), dict(y.attrs)):
            diffs.append(f"{s}{k}: attrs differ")
        if isinstance(x, zarr.Array):
            if not np.array_equal(x[...], y[...], equal_nan=x.dtype.kind == "f"):
                diffs.append(f"{s}{k}: data differ")
            else:
                same += 1
for rel in sorted(files_a & files_b):
    if any(part.endswith(".zarr") for part in rel.parts):
        continue
    a, b = A / rel, B / rel
    suf = rel.suffix
    if suf == ".parquet":
        x, y = pd.read_parquet(a), pd.read_parquet(b)
        drop = [c for c in x.columns if TIMING.search(c)]
        try:
            pd.testing.assert_frame_equal(x.drop(columns=drop), y.drop(columns=drop))
            same += 1
        except AssertionError as e:
            diffs.append(f"{rel}: {str(e).splitlines()[0:3]}")
    elif suf == ".json":
        if eq_json(json.loads(a.read_text()), json.loads(b.read_text())):
            same += 1
        else:
            diffs.append(f"{rel}: json differs")
    elif suf in (".tsv", ".csv", ".txt"):
        sep = "\t" if suf == ".tsv" else ","
        if suf == ".txt":
            ok = a.read_text() == b.read_text()
        else:
            x, y = pd.read_csv(a, sep=sep), pd.read_csv(b, sep=sep)
            drop = [c for c in x.columns if TIMING.search(c)]
            ok = x.drop(columns=drop).equals(y.drop(columns=drop))
        if ok:
            same += 1
        else:
            diffs.append(f"{rel}: table differs")
    elif suf == ".pt":
        x, y = torch.load(a, weights_only=True), torch.load(b, weights_only=True)
        ok = True
        for key in x:
            if key in ("summary", "version", "run"):
                continue
            if key in ("model", "optimizer"):
                xs, ys = x[key], y[key]
                if key == "optimizer":
                    ok &= (
                        str(xs) == str(ys)
                        if not isinstance(xs, dict)
                        else all(
                            torch.equal(v1, v2)
                            for s1, s2 in zip(xs["state"].values(), ys["state"].values())
                            for v1, v2 in zip(s1.values(), s2.values())
                            if torch.is_tensor(v1)
                        )
                    )
                else:
                    ok &= all(torch.equal(xs[k], ys[k]) for k in xs)
            elif torch.is_tensor(x[key]):
                ok &= torch.equal(x[key], y[key])
            elif key in ("rng", "rng_ranks", "scaler", "targets"):
                continue
            else:
                ok &= eq_json(x[key], y[key])
        if ok:
            same += 1
        else:
            diffs.append(f"{rel}: checkpoint differs")
    elif suf == ".png":
        if a.read_bytes() == b.read_bytes():
            same += 1
        else:
            diffs.append(f"{rel}: png bytes differ")
print(f"{same} items identical; {len(diffs)} differ")
for d in diffs:
    print("DIFF", d)
sys.exit(1 if diffs else 0)
