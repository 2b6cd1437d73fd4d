#!/usr/bin/env python3
"""Where a trained strassen.rule model (one layer) ranks the witnesses of match3-distinct.

Recomputes, from a checkpoint's weights, the joint score of every pair (j, k) for every query i
and head: f1(i)·f2(j)/√d + (g1(j)·g2(k) + h1(k)·h2(i))/√d, on x = rmsnorm(token + position
embedding), as examples/rules/strassen.rule computes it (heads are contiguous blocks of
channels). Over sequences drawn as scripts/match3_errors.py draws them (the same seed gives the
same sequences), it reports, per kind of position:
  - how often some head's best pair is a witness (a pair (j, k) with x_i + x_j + x_k ≡ 0);
  - the rank of the best-ranked witness pair among all n² pairs, in the head that ranks it best;
  - the gap between the best score over all pairs and the best over non-witness pairs;
  - per head, how well the log-mean-exp of the scores over all pairs (what
    examples/rules/strassen_evidence.rule reads) separates these positives from the negatives:
    the area under the ROC curve of the best head (0.5: no better than chance).
So it tells a witness that loses the ranking from one that wins it but is not confirmed after
the attention (docs/experiments/match3.md, "Temperature"). Standard library only; a few
seconds per hundred sequences per head.

Usage: scripts/match3_scores.py CHECKPOINT SEQUENCES SEED
"""
import json
import math
import random
import statistics
import sys

import checkpoint_io as io
import match3_errors as errors


def matrix(params, name):
    shape, values = params[f"param/{name}"]
    rows, cols = shape
    return [list(values[r * cols : (r + 1) * cols]) for r in range(rows)]


def apply(w, x):
    return [sum(a * b for a, b in zip(row, x)) for row in w]


def auc(negatives, positives):
    """P(a positive's value > a negative's), ties counted half (Mann-Whitney)."""
    ranked = sorted([(v, 0) for v in negatives] + [(v, 1) for v in positives])
    rank_sum, r = 0.0, 0
    while r < len(ranked):
        end = r
        while end < len(ranked) and ranked[end][0] == ranked[r][0]:
            end += 1
        mid = (r + end + 1) / 2  # ranks from 1
        rank_sum += mid * sum(1 for v in ranked[r:end] if v[1])
        r = end
    p, q = len(positives), len(negatives)
    return (rank_sum - p * (p + 1) / 2) / (p * q)


def main():
    if len(sys.argv) != 4:
        sys.exit(__doc__.split("\n\n")[2])
    source, sequences, seed = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    meta, tensors = io.read(source)
    config = json.loads(meta["config"])
    # strassen_evidence.rule scores pairs the same way (it only reads more of them)
    if config["depth"] != 1 or not config["rule"].endswith(("strassen.rule", "strassen_evidence.rule")):
        sys.exit(f"{source}: a one-layer strassen.rule (or strassen_evidence.rule) checkpoint is needed")
    heads = int(config["rule_params"]["heads"])
    d = int(config["rule_params"]["dim_head"])
    scale = d**-0.5
    tok, pos = matrix(tensors, "token_emb.weight"), matrix(tensors, "pos_emb.weight")
    gamma = tensors["param/layers.0.x.rmsnorm0.weight"][1]
    maps = {f: matrix(tensors, f"layers.0.{f}.linear0.weight") for f in ("f1", "f2", "g1", "g2", "h1", "h2")}

    rng = random.Random(seed)
    stats = {}  # kind -> lists

    def record(kind, key, value):
        stats.setdefault(kind, {}).setdefault(key, []).append(value)

    for _ in range(sequences):
        tokens = errors.draw(rng)
        facts = errors.describe(tokens)
        n = len(tokens)
        xs = []
        for p, t in enumerate(tokens):
            v = [a + b for a, b in zip(tok[t], pos[p])]
            r = 1 / math.sqrt(sum(a * a for a in v) / len(v) + 1e-5)
            xs.append([a * r * g for a, g in zip(v, gamma)])
        proj = {f: [apply(w, x) for x in xs] for f, w in maps.items()}

        def dots(a, b, h):
            sl = slice(h * d, (h + 1) * d)
            return [[sum(p * q for p, q in zip(a[u][sl], b[v][sl])) * scale for v in range(n)] for u in range(n)]

        per_head = []
        for h in range(heads):
            F = dots(proj["f1"], proj["f2"], h)  # F[i][j]
            G = dots(proj["g1"], proj["g2"], h)  # G[j][k]
            H = dots(proj["h2"], proj["h1"], h)  # H[i][k] = h1(k)·h2(i)
            per_head.append((F, G, H))
        for i, (label, residue_pairs, _) in enumerate(facts):
            kind = "negative" if not label else ("positive, one witness" if residue_pairs == 1 else "positive, two or more")
            witness = [(j, k) for j in range(n) for k in range(n) if (tokens[i] + tokens[j] + tokens[k]) % 37 == 0
                       and tokens[j] != tokens[k]]
            wset = set(witness)
            best_rank, top_is_witness, gaps, maxima = None, False, [], []
            for h, (F, G, H) in enumerate(per_head):
                scores = [(F[i][j] + G[j][k] + H[i][k], (j, k)) for j in range(n) for k in range(n)]
                scores.sort(reverse=True)
                maxima.append(scores[0][0])
                top = scores[0][0]
                lme = top + math.log(sum(math.exp(sc - top) for sc, _ in scores) / len(scores))
                record(kind, f"evidence {h}", lme)
                if not witness:
                    continue
                top_is_witness |= scores[0][1] in wset
                rank = next(r for r, (_, jk) in enumerate(scores) if jk in wset)
                best_rank = rank if best_rank is None else min(best_rank, rank)
                best_other = next(s for s, jk in scores if jk not in wset)
                best_witness = next(s for s, jk in scores if jk in wset)
                gaps.append(best_witness - best_other)
            record(kind, "max score (best head)", max(maxima))
            if witness:
                record(kind, "top pair is a witness in some head", 1.0 if top_is_witness else 0.0)
                record(kind, "best witness rank (best head)", best_rank)
                record(kind, "witness gap (best head)", max(gaps))

    print(f"{source}: {sequences} sequences (seed {seed}), {heads} heads\n")
    print("| kind | positions | top pair a witness in some head % | best witness rank: median (p90) | witness − best other score, best head: median | best score over all pairs, best head: median | evidence AUC against the negatives, best head |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for kind in ("negative", "positive, one witness", "positive, two or more"):
        s = stats.get(kind, {})
        maxima = s.get("max score (best head)", [])
        if not maxima:
            continue
        if kind == "negative":
            print(f"| {kind} | {len(maxima)} | – | – | – | {statistics.median(maxima):.2f} | – |")
            continue
        tops = s["top pair is a witness in some head"]
        ranks = sorted(s["best witness rank (best head)"])
        gaps = s["witness gap (best head)"]
        p90 = ranks[int(0.9 * (len(ranks) - 1))]
        negatives = stats["negative"]
        areas = [auc(negatives[f"evidence {h}"], s[f"evidence {h}"]) for h in range(heads)]
        best = max(areas, key=lambda a: abs(a - 0.5))
        print(f"| {kind} | {len(maxima)} | {100 * sum(tops) / len(tops):.1f} | {statistics.median(ranks):g} ({p90}) | "
              f"{statistics.median(gaps):.2f} | {statistics.median(maxima):.2f} | {best:.3f} |")


if __name__ == "__main__":
    main()
