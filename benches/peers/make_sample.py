#!/usr/bin/env python3
"""Write a synthetic Nexmark event file (JSON lines) in the format of
`examples/nexmark --dump FILE`, for developing the peer programs before a real
dump exists.

    python3 make_sample.py --events 1000000 --out /tmp/nexmark-sample-1m.jsonl

Shape (close to the Nexmark generator's defaults):
* proportions 1 person : 3 auctions : 46 bids, interleaved in blocks of 50;
* ids of persons and auctions start at 1000;
* one event per 0.1 ms of event time (1M events = 100 s), starting at
  1700000000000 ms, with up to 100 ms of disorder (date_time jitter);
* bids refer to recent auctions and persons ("hot" ones more often);
* auction categories 10..19, expires 2..20 s after creation;
* person states from a list that includes OR, ID and CA.
Deterministic for a given --seed.
"""
import argparse
import json
import random

PERSON_PROPORTION, AUCTION_PROPORTION, BID_PROPORTION = 1, 3, 46
TOTAL_PROPORTION = PERSON_PROPORTION + AUCTION_PROPORTION + BID_PROPORTION
FIRST_ID = 1000
BASE_TIME_MS = 1_700_000_000_000
EVENTS_PER_MS = 10  # one event each 0.1 ms
MAX_DISORDER_MS = 100
NUM_CATEGORIES = 10
FIRST_CATEGORY = 10

US_STATES = ["AZ", "CA", "ID", "OR", "WA", "WY"]
US_CITIES = ["Phoenix", "Los Angeles", "San Francisco", "Boise", "Portland",
             "Bend", "Redmond", "Seattle", "Kent", "Cheyenne"]
FIRST_NAMES = ["Peter", "Paul", "Luke", "John", "Saul", "Vicky", "Kate",
               "Julie", "Sarah", "Deiter", "Walter"]
LAST_NAMES = ["Shultz", "Abrams", "Spencer", "White", "Bartels", "Walton",
              "Smith", "Jones", "Noris"]
CHANNELS = ["Google", "Facebook", "Baidu", "Apple"]


def rand_string(rng, n):
    return "".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(n))


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--events", type=int, required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--seed", type=int, default=42)
    args = ap.parse_args()

    rng = random.Random(args.seed)
    # Pre-made filler strings, so generation stays fast; contents are irrelevant.
    fillers = [rand_string(rng, 20) for _ in range(64)]
    next_person = FIRST_ID
    next_auction = FIRST_ID
    with open(args.out, "w", buffering=1 << 20) as out:
        for i in range(args.events):
            nominal = BASE_TIME_MS + i // EVENTS_PER_MS
            dt = max(BASE_TIME_MS, nominal - rng.randint(0, MAX_DISORDER_MS)) \
                if rng.random() < 0.2 else nominal
            slot = i % TOTAL_PROPORTION
            if slot < PERSON_PROPORTION:
                pid = next_person
                next_person += 1
                name = f"{rng.choice(FIRST_NAMES)} {rng.choice(LAST_NAMES)}"
                ev = {"type": "person", "id": pid, "name": name,
                      "email_address": f"{name.replace(' ', '.').lower()}@{rng.choice(fillers)[:6]}.com",
                      "credit_card": " ".join(f"{rng.randint(0, 9999):04d}" for _ in range(4)),
                      "city": rng.choice(US_CITIES), "state": rng.choice(US_STATES),
                      "date_time": dt, "extra": rng.choice(fillers)}
            elif slot < PERSON_PROPORTION + AUCTION_PROPORTION:
                aid = next_auction
                next_auction += 1
                # seller: mostly a recent person, sometimes any earlier one
                if rng.random() < 0.5 and next_person > FIRST_ID + 10:
                    seller = rng.randint(max(FIRST_ID, next_person - 10), next_person - 1)
                else:
                    seller = rng.randint(FIRST_ID, max(FIRST_ID, next_person - 1))
                initial = rng.randint(1, 1000)
                ev = {"type": "auction", "id": aid,
                      "item_name": rng.choice(fillers)[:10],
                      "description": rng.choice(fillers),
                      "initial_bid": initial, "reserve": initial + rng.randint(1, 1000),
                      "date_time": dt, "expires": dt + rng.randint(2_000, 20_000),
                      "seller": seller,
                      "category": FIRST_CATEGORY + rng.randrange(NUM_CATEGORIES),
                      "extra": rng.choice(fillers)}
            else:
                # auction: hot (one of the last few) most of the time
                last_a = max(FIRST_ID, next_auction - 1)
                if rng.random() < 0.5:
                    auction = rng.randint(max(FIRST_ID, last_a - 5), last_a)
                else:
                    auction = rng.randint(max(FIRST_ID, last_a - 1000), last_a)
                last_p = max(FIRST_ID, next_person - 1)
                bidder = rng.randint(max(FIRST_ID, last_p - 1000), last_p)
                ev = {"type": "bid", "auction": auction, "bidder": bidder,
                      "price": rng.randint(1, 100_000),
                      "channel": rng.choice(CHANNELS),
                      "url": "https://www.nexmark.com/" + rng.choice(fillers)[:8] + "/item.htm",
                      "date_time": dt, "extra": rng.choice(fillers)}
            out.write(json.dumps(ev, separators=(",", ":")))
            out.write("\n")


if __name__ == "__main__":
    main()
