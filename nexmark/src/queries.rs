//! Nexmark q0-q8 as Tributary dataflows, after the standard (Flink SQL) definitions.
//!
//! Every query takes the event stream as sources emit it (`(Timed<Event>, time, diff)`) and returns its result as
//! a differential collection of [`Row`]s, plus the records its event-time operators found too late (allowed
//! lateness 0; with the 4 s watermark delay, the generator's disorder at its default event-time rate never gets
//! there; at a slow rate, such as the example's `--event-rate 25`, it does).
//!
//! | query | what | how |
//! |---|---|---|
//! | q0 | pass-through of bids | map |
//! | q1 | bid prices in euro (`price * 908 / 1000`) | map |
//! | q2 | bids on auctions whose id is a multiple of 123 | filter |
//! | q3 | people in OR, ID or CA selling in category 10 | differential `join` |
//! | q4 | average winning price per category | `join`, `aggregate(Max)`, `aggregate(Average)` |
//! | q5 | hot items: auctions with the most bids per 10 s window sliding by 2 s | `window_aggregate(Count)`, then the maximum per window |
//! | q6 | average selling price of each seller's last 10 auctions | `join`, `aggregate(Max)`, a fold over the seller's auctions |
//! | q7 | highest bid per 10 s tumbling window | a partial maximum per window and shard, then the maximum per window |
//! | q8 | people who registered and opened an auction in the same 10 s window | `window_join`, `distinct` |
//!
//! Deviations from the Flink SQL, each because the SQL is not well defined: q4 and q6 consider every bid within
//! the auction's lifetime as it arrives (as the Flink SQL does, which does not wait for the auction to close);
//! q6 orders a seller's auctions by their closing time (the SQL orders by a bid's time that its GROUP BY drops).

use differential_dataflow::VecCollection;
use differential_dataflow::collection::AsCollection;
use serde::{Deserialize, Serialize};
use timely::dataflow::Stream;
use timely::dataflow::operators::Concat;
use timely::dataflow::operators::vec::Map;
use tributary_operators::aggregate::{Aggregate, Average, Count, Fold, Max, Multiset};
use tributary_operators::event_time::Timed;
use tributary_operators::timed::TimedStream;
use tributary_operators::window::{WindowAggregate, Windows};
use tributary_operators::window_join::WindowJoin;

use crate::event::{Auction, Bid, Event, Person};

/// A Nexmark query.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Query {
    /// Pass-through.
    Q0,
    /// Currency conversion.
    Q1,
    /// Selection.
    Q2,
    /// Local item suggestion.
    Q3,
    /// Average price per category.
    Q4,
    /// Hot items.
    Q5,
    /// Average selling price by seller.
    Q6,
    /// Highest bid.
    Q7,
    /// Monitor new users.
    Q8,
}

impl Query {
    /// Every query, in order.
    pub const ALL: [Query; 9] = [Query::Q0, Query::Q1, Query::Q2, Query::Q3, Query::Q4, Query::Q5, Query::Q6, Query::Q7, Query::Q8];
}

impl std::str::FromStr for Query {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Query::ALL.into_iter().find(|q| q.to_string().eq_ignore_ascii_case(s)).ok_or_else(|| format!("unknown query `{s}`: give q0 .. q8"))
    }
}

impl std::fmt::Display for Query {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "q{}", *self as u8)
    }
}

/// A result row of some query; fields are named as in the Nexmark definitions.
#[allow(missing_docs)]
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(tag = "query", rename_all = "lowercase")]
pub enum Row {
    /// q0: the bid.
    Q0(Bid),
    /// q1: the bid with its price in euro.
    Q1 { auction: u64, bidder: u64, price: u64, date_time: u64 },
    /// q2: auction and price.
    Q2 { auction: u64, price: u64 },
    /// q3: seller and auction.
    Q3 { name: String, city: String, state: String, auction: u64 },
    /// q4: category and average winning price (rounded down).
    Q4 { category: u64, average: u64 },
    /// q5: window start, auction, bids in the window.
    Q5 { window_start: u64, auction: u64, bids: u64 },
    /// q6: seller and average price of its last 10 auctions (rounded down).
    Q6 { seller: u64, average: u64 },
    /// q7: window start and a bid with the highest price in it.
    Q7 { window_start: u64, auction: u64, bidder: u64, price: u64 },
    /// q8: a person who registered and opened an auction in the window.
    Q8 { person: u64, name: String, window_start: u64 },
}

/// Updates as sources emit them.
pub type Updates<'scope, D> = Stream<'scope, u64, Vec<(Timed<D>, u64, isize)>>;

/// A query's result and the event times of the records its windows found too late.
pub struct QueryStreams<'scope> {
    /// The result, as a collection.
    pub rows: VecCollection<'scope, u64, Row, isize>,
    /// Event times of records later than the allowed lateness.
    pub late: Stream<'scope, u64, Vec<u64>>,
}

/// The window of q5, q7 and q8 (ms).
pub const WINDOW_MS: u64 = 10_000;
/// The slide of q5 (ms).
pub const SLIDE_MS: u64 = 2_000;
/// How many shards q7 computes partial maxima in before the global maximum per window.
const Q7_SHARDS: u64 = 16;
/// How many of a seller's auctions q6 averages.
const Q6_LAST: usize = 10;

fn bids<'scope>(events: Updates<'scope, Event>) -> Updates<'scope, Bid> {
    events.flat_map_timed(|e| match e {
        Event::Bid(b) => Some(b),
        _ => None,
    })
}

fn persons<'scope>(events: Updates<'scope, Event>) -> Updates<'scope, Person> {
    events.flat_map_timed(|e| match e {
        Event::Person(p) => Some(p),
        _ => None,
    })
}

fn auctions<'scope>(events: Updates<'scope, Event>) -> Updates<'scope, Auction> {
    events.flat_map_timed(|e| match e {
        Event::Auction(a) => Some(a),
        _ => None,
    })
}

/// The highest bid within each auction's lifetime: `((auction, seller, category, expires), price)`.
fn winning_bids<'scope>(events: Updates<'scope, Event>) -> VecCollection<'scope, u64, ((u64, u64, u64, u64), u64), isize> {
    let auctions = auctions(events.clone()).map(|(a, t, d)| {
        let a = a.value;
        ((a.id, (a.seller, a.category, a.date_time, a.expires)), t, d)
    });
    let bids = bids(events).map(|(b, t, d)| ((b.value.auction, (b.value.price, b.value.date_time)), t, d));
    auctions
        .as_collection()
        .join(bids.as_collection())
        .flat_map(|(id, ((seller, category, opened, expires), (price, at)))| {
            (opened <= at && at <= expires).then_some(((id, seller, category, expires), price))
        })
        .aggregate("WinningBid", Max)
}

/// Builds `query` over `events`.
pub fn build<'scope>(query: Query, events: Updates<'scope, Event>) -> QueryStreams<'scope> {
    let scope = events.scope();
    let no_late = || timely::dataflow::operators::ToStream::to_stream(Vec::<u64>::new(), scope);
    match query {
        Query::Q0 => QueryStreams { rows: bids(events).map(|(b, t, d)| (Row::Q0(b.value), t, d)).as_collection(), late: no_late() },
        Query::Q1 => {
            let rows = bids(events).map(|(b, t, d)| {
                let b = b.value;
                (Row::Q1 { auction: b.auction, bidder: b.bidder, price: b.price * 908 / 1000, date_time: b.date_time }, t, d)
            });
            QueryStreams { rows: rows.as_collection(), late: no_late() }
        }
        Query::Q2 => {
            let rows = bids(events).flat_map(|(b, t, d)| {
                let b = b.value;
                (b.auction % 123 == 0).then_some((Row::Q2 { auction: b.auction, price: b.price }, t, d))
            });
            QueryStreams { rows: rows.as_collection(), late: no_late() }
        }
        Query::Q3 => {
            let sellers = persons(events.clone()).flat_map(|(p, t, d)| {
                let p = p.value;
                matches!(p.state.as_str(), "or" | "id" | "ca").then_some(((p.id, (p.name, p.city, p.state)), t, d))
            });
            let items = auctions(events).flat_map(|(a, t, d)| (a.value.category == 10).then_some(((a.value.seller, a.value.id), t, d)));
            let rows = sellers.as_collection().join(items.as_collection()).map(|(_, ((name, city, state), auction))| Row::Q3 {
                name,
                city,
                state,
                auction,
            });
            QueryStreams { rows, late: no_late() }
        }
        Query::Q4 => {
            let rows = winning_bids(events)
                .map(|((_, _, category, _), price)| (category, price as i64))
                .aggregate("CategoryAverage", Average)
                .map(|(category, (sum, count))| Row::Q4 { category, average: (sum / count as i64) as u64 });
            QueryStreams { rows, late: no_late() }
        }
        Query::Q5 => {
            let windows = bids(events).map_timed(|b| (b.auction, ())).window_aggregate(
                "BidsPerAuction",
                Windows::Hopping { size_ms: WINDOW_MS, slide_ms: SLIDE_MS },
                Count,
            );
            let hottest = Fold::new(|counts: &Multiset<(i64, u64)>| {
                let top = counts.keys().next_back()?.0;
                Some((top, counts.iter().rev().take_while(|((n, _), _)| *n == top).map(|((_, a), m)| (*a, *m)).collect::<Vec<_>>()))
            });
            let rows = windows
                .results
                .as_collection()
                .map(|((auction, start), count)| (start, (count, auction)))
                .aggregate("HotItems", hottest)
                .flat_map(|(start, (count, auctions))| {
                    auctions.into_iter().flat_map(move |(auction, m)| {
                        std::iter::repeat_n(Row::Q5 { window_start: start, auction, bids: count as u64 }, m.max(0) as usize)
                    })
                });
            QueryStreams { rows, late: windows.late.map(|l| l.event_time) }
        }
        Query::Q6 => {
            let last = Fold::new(|auctions: &Multiset<(u64, u64, u64)>| {
                let prices: Vec<u64> = auctions
                    .iter()
                    .rev()
                    .flat_map(|((_, _, price), m)| std::iter::repeat_n(*price, (*m).max(0) as usize))
                    .take(Q6_LAST)
                    .collect();
                (!prices.is_empty()).then(|| prices.iter().sum::<u64>() / prices.len() as u64)
            });
            let rows = winning_bids(events)
                .map(|((id, seller, _, expires), price)| (seller, (expires, id, price)))
                .aggregate("SellerAverage", last)
                .map(|(seller, average)| Row::Q6 { seller, average });
            QueryStreams { rows, late: no_late() }
        }
        Query::Q7 => {
            let highest = Fold::new(|bids: &Multiset<(u64, u64, u64)>| {
                let top = bids.keys().next_back()?.0;
                Some(
                    bids.iter()
                        .rev()
                        .take_while(|((p, _, _), _)| *p == top)
                        .flat_map(|(bid, m)| std::iter::repeat_n(*bid, (*m).max(0) as usize))
                        .collect::<Vec<_>>(),
                )
            });
            let windows = bids(events)
                .map(|(b, t, d)| {
                    let b = b.value;
                    (Timed::new(b.date_time, (b.auction % Q7_SHARDS, (b.price, b.auction, b.bidder))), t, d)
                })
                .window_aggregate("HighestPerShard", Windows::Tumbling { size_ms: WINDOW_MS }, highest.clone());
            let rows = windows
                .results
                .as_collection()
                .flat_map(|((_, start), bids)| bids.into_iter().map(move |bid| (start, bid)))
                .aggregate("Highest", highest)
                .flat_map(|(start, bids)| {
                    bids.into_iter().map(move |(price, auction, bidder)| Row::Q7 { window_start: start, auction, bidder, price })
                });
            QueryStreams { rows, late: windows.late.map(|l| l.event_time) }
        }
        Query::Q8 => {
            let people = persons(events.clone()).map_timed(|p| (p.id, p.name));
            let sellers = auctions(events).map_timed(|a| (a.seller, a.id));
            let joined = people.window_join("NewSellers", sellers, Windows::Tumbling { size_ms: WINDOW_MS }, std::time::Duration::ZERO);
            let rows = joined
                .results
                .as_collection()
                .map(|((person, start), (name, _auction))| (person, name, start))
                .distinct()
                .map(|(person, name, window_start)| Row::Q8 { person, name, window_start });
            let late = joined.late_left.map(|l| l.event_time).concat(joined.late_right.map(|l| l.event_time));
            QueryStreams { rows, late }
        }
    }
}
