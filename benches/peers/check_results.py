#!/usr/bin/env python3
"""Checks a peer's results against a plain-Python batch evaluation of the query.

    bytewax_nexmark.py --query q5 --input EVENTS --results-out /tmp/bw-q5.jsonl
    check_results.py --query q5 --input EVENTS --bytewax /tmp/bw-q5.jsonl

    flink_nexmark.py --query q5 --input EVENTS --collect --results-out /tmp/fl-q5.jsonl
    check_results.py --query q5 --input EVENTS --flink /tmp/fl-q5.jsonl

(with bytewax --workers N, concatenate FILE.0 .. FILE.N-1 first). Append-only
queries (q0-q3, q5, q7, q8) must give the same multiset of rows; the updating
ones (q4, q6 / q6_topn) the same final value per key (the last update of each
key for Bytewax; the changelog applied for Flink). Exits 1 on a difference.
Loads the whole file in memory (1M events: ~3 GB, ~20 s).
"""
import argparse
import json
import sys
from collections import Counter, defaultdict
from datetime import datetime, timezone

STATES = {"OR", "ID", "CA", "or", "id", "ca"}


def expected(q, path):
    bids, persons, auctions = [], [], []
    with open(path) as f:
        for line in f:
            e = json.loads(line)
            {"bid": bids, "person": persons, "auction": auctions}[e["type"]].append(e)
    if q == "q0":
        return Counter((b["auction"], b["bidder"], b["price"], b["date_time"], b["extra"]) for b in bids)
    if q == "q1":
        return Counter(
            (b["auction"], b["bidder"], round(0.908 * b["price"], 3), b["date_time"], b["extra"]) for b in bids
        )
    if q == "q2":
        return Counter((b["auction"], b["price"]) for b in bids if b["auction"] % 123 == 0)
    if q == "q3":
        ps = {p["id"]: p for p in persons if p["state"] in STATES}
        return Counter(
            (ps[a["seller"]]["name"], ps[a["seller"]]["city"], ps[a["seller"]]["state"], a["id"])
            for a in auctions
            if a["category"] == 10 and a["seller"] in ps
        )
    if q in ("q4", "q6", "q6_topn"):
        au = {a["id"]: a for a in auctions}
        top = {}
        for b in bids:
            a = au.get(b["auction"])
            if a and a["date_time"] <= b["date_time"] <= a["expires"]:
                top[a["id"]] = max(top.get(a["id"], -1), b["price"])
        groups = defaultdict(list)
        if q == "q4":
            for aid, p in top.items():
                groups[au[aid]["category"]].append(p)
            return {str(c): sum(v) // len(v) for c, v in groups.items()}
        for aid, p in top.items():
            groups[au[aid]["seller"]].append(((au[aid]["expires"], aid), p))
        out = {}
        for seller, v in groups.items():
            last = [p for _, p in sorted(v, reverse=True)[:10]]
            out[str(seller)] = sum(last) // len(last)
        return out
    if q == "q5":
        windows = defaultdict(Counter)
        for b in bids:
            t = b["date_time"]
            for start in range(t // 2000 * 2000, t - 10000, -2000):
                windows[start][b["auction"]] += 1
        out = Counter()
        for start, counts in windows.items():
            n = max(counts.values())
            out.update((start, a, c) for a, c in counts.items() if c == n)
        return out
    if q == "q7":
        windows = defaultdict(list)
        for b in bids:
            windows[b["date_time"] // 10000].append(b)
        out = Counter()
        for bs in windows.values():
            n = max(b["price"] for b in bs)
            out.update((b["auction"], b["bidder"], b["price"], b["date_time"], b["extra"]) for b in bs if b["price"] == n)
        return out
    if q == "q8":
        registered = {(p["id"], p["date_time"] // 10000): p["name"] for p in persons}
        opened = {(a["seller"], a["date_time"] // 10000) for a in auctions}
        return Counter((pid, name, w * 10000) for (pid, w), name in registered.items() if (pid, w) in opened)
    raise SystemExit(f"unknown query {q}")


def from_bytewax(q, path):
    rows = [json.loads(line) for line in open(path)]
    if q in ("q4", "q6"):
        return {k: v for k, v in rows}  # keyed; the last update per key wins
    if q == "q3":
        return Counter(tuple(v) for _k, v in rows)
    if q == "q1":
        return Counter((r[0], r[1], round(r[2], 3), r[3], r[4]) for r in rows)
    return Counter(tuple(r) for r in rows)


def _ms(s):
    fmt = "%Y-%m-%d %H:%M:%S.%f" if "." in s else "%Y-%m-%d %H:%M:%S"
    return round(datetime.strptime(s, fmt).replace(tzinfo=timezone.utc).timestamp() * 1000)


def from_flink(q, path):
    rows = [json.loads(line) for line in open(path)]
    if q in ("q4", "q6_topn"):
        table = {}
        for kind, r in rows:
            if kind in ("INSERT", "UPDATE_AFTER"):
                table[str(r[0])] = r[1]
            else:
                table.pop(str(r[0]), None)
        return table
    if any(kind != "INSERT" for kind, _ in rows):
        raise SystemExit(f"{q}: expected an append-only result")
    rows = [r for _, r in rows]
    if q in ("q0", "q7"):
        return Counter((r[0], r[1], r[2], _ms(r[3]), r[4]) for r in rows)
    if q == "q1":
        return Counter((r[0], r[1], round(float(r[2]), 3), _ms(r[3]), r[4]) for r in rows)
    if q == "q8":
        return Counter((r[0], r[1], _ms(r[2])) for r in rows)
    return Counter(tuple(r) for r in rows)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--query", required=True)
    ap.add_argument("--input", required=True, help="the events file the peer read")
    peer = ap.add_mutually_exclusive_group(required=True)
    peer.add_argument("--bytewax", metavar="FILE", help="bytewax_nexmark.py --results-out FILE")
    peer.add_argument("--flink", metavar="FILE", help="flink_nexmark.py --collect --results-out FILE")
    args = ap.parse_args()
    q = args.query
    if args.flink and q == "q6":
        raise SystemExit("Flink runs q6 as q6_topn")
    exp = expected(q, args.input)
    got = from_bytewax(q, args.bytewax) if args.bytewax else from_flink(q, args.flink)
    if q == "q5" and args.flink:  # Flink's q5 rows carry no window start
        exp = Counter((a, n) for (_s, a, n), c in exp.items() for _ in range(c))
    if isinstance(exp, dict) and not isinstance(exp, Counter):
        bad = sorted(k for k in set(exp) | set(got) if exp.get(k) != got.get(k))
        print(f"{q}: {len(exp)} keys expected, {len(got)} got, {len(bad)} differ"
              + (f", e.g. {[(k, exp.get(k), got.get(k)) for k in bad[:3]]}" if bad else ""))
    else:
        bad = (exp - got) + (got - exp)
        print(f"{q}: {sum(exp.values())} rows expected, {sum(got.values())} got, {sum(bad.values())} differ"
              + (f", e.g. {list(bad)[:3]}" if bad else ""))
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
