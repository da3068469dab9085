"""Summarise a boxes.py log: moof arrival gaps, video fragment durations, keyframe-start fragments."""
import re, statistics, sys
arr, vdur, vt, kf, lag = [], [], [], [], []
for line in open(sys.argv[1]):
    m = re.match(r"\s*([\d.]+) moof .*?\[vide tfdt=([\d.]+)s n=(\d+) dur=([\d.]+)s first=(.)", line)
    if m:
        t, tfdt, n, d, k = float(m[1]), float(m[2]), int(m[3]), float(m[4]), m[5]
        arr.append(t); vdur.append(d); kf.append(k == "K"); lag.append(t - (tfdt + d))
gaps = [b - a for a, b in zip(arr, arr[1:])]
q = lambda xs, p: sorted(xs)[min(len(xs) - 1, int(p * len(xs)))]
print(f"fragments={len(arr)} gap mean={statistics.mean(gaps):.3f} p50={q(gaps,.5):.3f} p95={q(gaps,.95):.3f} max={max(gaps):.3f} min={min(gaps):.3f}")
print(f"video frag dur: {sorted(set(round(d,3) for d in vdur))}; keyframe-start fragments={sum(kf)}")
lag2 = lag[3:]
print(f"arrival - media end (after 3 frags, relative): min={min(lag2):.3f} max={max(lag2):.3f} spread={max(lag2)-min(lag2):.3f}")
