"""Slow, obviously-right reference of the merge: Python loops over blocks, sorted() ranking.

Ranking: larger score first, then lower index. Zeros of tau are never kept. Rounding of
kept counts: floor(x + 0.5).
"""

import math
from fractions import Fraction

import torch


def rounded(x):
    return math.floor(x + 0.5)


def blocks(numel, m):
    """(start, stop, keep_share_numerator) of each block: full blocks then the tail."""
    spans = [(s, s + m) for s in range(0, numel - numel % m, m)]
    if numel % m:
        spans.append((numel - numel % m, numel))
    return spans


def block_quota(n, length, m):
    return n if length == m else rounded(n * length / m)


def shared_tail_quotas(ns, length, m):
    """Conflict-aware tail: round(sum of exact shares) entries, whole parts first, then one
    each to the largest fractional parts (lower task first), in exact fractions."""
    shares = [Fraction(n * length, m) for n in ns]
    quotas = [math.floor(q) for q in shares]
    extra = rounded(float(sum(shares))) - sum(quotas)
    order = sorted(range(len(ns)), key=lambda i: (-(shares[i] - quotas[i]), i))
    for i in order[:extra]:
        quotas[i] += 1
    return quotas


def ranked(indices, score):
    return sorted(indices, key=lambda j: (-score[j], j))


def masks(taus, densities, m, scores=None, conflict_aware=True):
    """Reference masks (lists of bools) for flattened float taus."""
    numel = len(taus[0])
    claimed = [False] * numel
    ns = [rounded(d * m) for d in densities]
    out = []
    for i, tau in enumerate(taus):
        score = [abs(v) for v in tau] if scores is None else scores[i]
        n = ns[i]
        mask = [False] * numel
        for start, stop in blocks(numel, m):
            quota = block_quota(n, stop - start, m)
            if conflict_aware and stop - start < m:
                quota = shared_tail_quotas(ns, stop - start, m)[i]
            idx = range(start, stop)
            free = [j for j in idx if not (conflict_aware and claimed[j])]
            taken = [j for j in idx if conflict_aware and claimed[j]]
            chosen = ranked(free, score)[:quota]
            chosen += ranked(taken, score)[: quota - len(chosen)]
            for j in chosen:
                if tau[j] != 0:
                    mask[j] = True
        for j in range(numel):
            claimed[j] = claimed[j] or mask[j]
        out.append(mask)
    return out


def election_total(taus, scale, ms, j):
    """The TIES election's total at position ``j`` as the kernels define it: each term
    ``float32(s_i) * tau_i`` rounded to float32, added in task order in float32. Where the
    exact total is 0 (terms that cancel), only this rounding decides the sign, so the
    reference must round as the definition does, not sum in float64."""
    total = torch.zeros((), dtype=torch.float32)
    for tau, s, mask in zip(taus, scale, ms):
        if mask[j]:
            total += torch.tensor(s, dtype=torch.float32) * torch.tensor(tau[j], dtype=torch.float32)
    return float(total)


def norm_factor(tau, mask, p):
    """``(sum |tau|^p / sum |mask * tau|^p)^(1/p)``, correctly rounded sums; 1 where nothing is kept."""
    dense = math.fsum(abs(v) ** p for v in tau)
    kept = math.fsum(abs(v) ** p for v, keep in zip(tau, mask) if keep)
    return (dense / kept) ** (1 / p) if kept > 0 else 1.0


def merge(base, tuned, weights, densities, *, sparsifier, conflict_aware, combine,
          block_size=None, lam=1.0, normalize=False, scores=None, rescale=None):
    """Reference merged tensor (float32) for one tensor; ``rescale`` ``"l1"``/``"l2"``
    scales each model by ``norm_factor`` instead of DARE's ``1/density``."""
    shape = base.shape
    b = base.float().reshape(-1).tolist()
    taus = [[x - y for x, y in zip(t.float().reshape(-1).tolist(), b)] for t in tuned]
    taus = [[float(torch.tensor(v, dtype=torch.float32)) for v in tau] for tau in taus]
    numel = len(b)
    m = block_size if sparsifier == "n:m" else numel
    ms = masks(taus, densities, m, scores, conflict_aware)
    if rescale is None:
        scale = [w / d if sparsifier == "random" and d > 0 else w for w, d in zip(weights, densities)]
    else:
        p = {"l1": 1, "l2": 2}[rescale]
        scale = [w * norm_factor(tau, mask, p) for w, tau, mask in zip(weights, taus, ms)]
    d = [[tau[j] * s if ms[i][j] else 0.0 for j in range(numel)]
         for i, (tau, s) in enumerate(zip(taus, scale))]
    merged = []
    for j in range(numel):
        col = [d[i][j] for i in range(len(d))]
        if combine == "ties":
            sign = 1.0 if election_total(taus, scale, ms, j) >= 0 else -1.0
            agree = [i for i, v in enumerate(col) if v != 0 and math.copysign(1, v) == sign]
            total = sum(col[i] for i in agree)
            if normalize:
                div = sum(weights[i] for i in agree)
                total = total / (div if div != 0 else 1.0)
        else:
            total = sum(col)
            if normalize:
                div = sum(weights)
                total = total / (div if abs(div) >= 1e-8 else 1.0)
        merged.append(b[j] + lam * total)
    return torch.tensor(merged, dtype=torch.float32).reshape(shape)
