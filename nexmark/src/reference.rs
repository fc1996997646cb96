//! Plain-Rust reference implementations of q0-q8 over the whole event vector, for tests on small inputs.
//!
//! Each takes every event with its dataflow time (as [`Config::all`](crate::Config::all) gives them) and
//! returns the final result as a multiset of rows. Windowed queries drop records later than their window's end
//! (allowed lateness 0), as the dataflows do; [`late`] counts the records they drop.

use std::collections::{BTreeMap, BTreeSet};

use crate::event::Event;
use crate::queries::{Query, Row, SLIDE_MS, WINDOW_MS};

/// The final result of `query` over `events` (`(partition, event, dataflow time)`), as row -> multiplicity.
pub fn reference(query: Query, events: &[(u32, Event, u64)]) -> BTreeMap<Row, isize> {
    let mut out: BTreeMap<Row, isize> = BTreeMap::new();
    let mut add = |row: Row| *out.entry(row).or_default() += 1;
    let bids = || events.iter().filter_map(|(_, e, t)| if let Event::Bid(b) = e { Some((b, *t)) } else { None });
    let persons = || events.iter().filter_map(|(_, e, t)| if let Event::Person(p) = e { Some((p, *t)) } else { None });
    let auctions = || events.iter().filter_map(|(_, e, t)| if let Event::Auction(a) = e { Some((a, *t)) } else { None });
    // Highest price of the bids within each auction's lifetime: id -> (seller, category, expires, price).
    let winning = || {
        let mut best: BTreeMap<u64, u64> = BTreeMap::new();
        let lifetimes: BTreeMap<u64, (u64, u64)> = auctions().map(|(a, _)| (a.id, (a.date_time, a.expires))).collect();
        for (b, _) in bids() {
            if let Some(&(opened, expires)) = lifetimes.get(&b.auction)
                && opened <= b.date_time
                && b.date_time <= expires
            {
                let price = best.entry(b.auction).or_default();
                *price = (*price).max(b.price);
            }
        }
        auctions().filter_map(|(a, _)| best.get(&a.id).map(|p| (a.id, (a.seller, a.category, a.expires, *p)))).collect::<BTreeMap<_, _>>()
    };
    let tumbling = |event_time: u64, time: u64| {
        let start = event_time - event_time % WINDOW_MS;
        (start + WINDOW_MS > time).then_some(start)
    };
    match query {
        Query::Q0 => bids().for_each(|(b, _)| add(Row::Q0(b.clone()))),
        Query::Q1 => bids()
            .for_each(|(b, _)| add(Row::Q1 { auction: b.auction, bidder: b.bidder, price: b.price * 908 / 1000, date_time: b.date_time })),
        Query::Q2 => bids().filter(|(b, _)| b.auction % 123 == 0).for_each(|(b, _)| add(Row::Q2 { auction: b.auction, price: b.price })),
        Query::Q3 => {
            for (p, _) in persons().filter(|(p, _)| matches!(p.state.as_str(), "or" | "id" | "ca")) {
                for (a, _) in auctions().filter(|(a, _)| a.category == 10 && a.seller == p.id) {
                    add(Row::Q3 { name: p.name.clone(), city: p.city.clone(), state: p.state.clone(), auction: a.id });
                }
            }
        }
        Query::Q4 => {
            let mut per_category: BTreeMap<u64, (u64, u64)> = BTreeMap::new();
            for (_, category, _, price) in winning().into_values() {
                let entry = per_category.entry(category).or_default();
                entry.0 += price;
                entry.1 += 1;
            }
            for (category, (sum, count)) in per_category {
                add(Row::Q4 { category, average: sum / count });
            }
        }
        Query::Q5 => {
            let mut counts: BTreeMap<(u64, u64), u64> = BTreeMap::new();
            for (b, time) in bids() {
                let last = b.date_time - b.date_time % SLIDE_MS;
                let first = (b.date_time + 1).saturating_sub(WINDOW_MS).div_ceil(SLIDE_MS) * SLIDE_MS;
                for start in (first..=last).step_by(SLIDE_MS as usize).filter(|s| s + WINDOW_MS > time) {
                    *counts.entry((start, b.auction)).or_default() += 1;
                }
            }
            let mut top: BTreeMap<u64, u64> = BTreeMap::new();
            for (&(start, _), &n) in &counts {
                let t = top.entry(start).or_default();
                *t = (*t).max(n);
            }
            for ((start, auction), n) in counts {
                if top[&start] == n {
                    add(Row::Q5 { window_start: start, auction, bids: n });
                }
            }
        }
        Query::Q6 => {
            let mut per_seller: BTreeMap<u64, Vec<(u64, u64, u64)>> = BTreeMap::new();
            for (id, (seller, _, expires, price)) in winning() {
                per_seller.entry(seller).or_default().push((expires, id, price));
            }
            for (seller, mut sold) in per_seller {
                sold.sort();
                let last: Vec<u64> = sold.iter().rev().take(10).map(|s| s.2).collect();
                add(Row::Q6 { seller, average: last.iter().sum::<u64>() / last.len() as u64 });
            }
        }
        Query::Q7 => {
            let mut per_window: BTreeMap<u64, Vec<(u64, u64, u64)>> = BTreeMap::new();
            for (b, time) in bids() {
                if let Some(start) = tumbling(b.date_time, time) {
                    per_window.entry(start).or_default().push((b.price, b.auction, b.bidder));
                }
            }
            for (start, bids) in per_window {
                let top = bids.iter().map(|b| b.0).max().expect("a window with bids");
                for (price, auction, bidder) in bids.into_iter().filter(|b| b.0 == top) {
                    add(Row::Q7 { window_start: start, auction, bidder, price });
                }
            }
        }
        Query::Q8 => {
            let sellers: BTreeSet<(u64, u64)> =
                auctions().filter_map(|(a, time)| tumbling(a.date_time, time).map(|start| (a.seller, start))).collect();
            let mut rows = BTreeSet::new();
            for (p, time) in persons() {
                if let Some(start) = tumbling(p.date_time, time)
                    && sellers.contains(&(p.id, start))
                {
                    rows.insert(Row::Q8 { person: p.id, name: p.name.clone(), window_start: start });
                }
            }
            rows.into_iter().for_each(add);
        }
    }
    out
}

/// How many records `query` finds too late over `events`: for the windowed queries (allowed lateness 0), the
/// records whose every window ended at or before their dataflow time (q5: its bids; q7: its bids; q8: its persons
/// and auctions); the other queries have no event-time windows, so none.
pub fn late(query: Query, events: &[(u32, Event, u64)]) -> u64 {
    // The last window an event falls in (sliding by SLIDE_MS for q5, tumbling otherwise) ends latest: a record is
    // late when that window has ended by its dataflow time.
    let ended = |event_time: u64, step: u64, time: u64| event_time - event_time % step + WINDOW_MS <= time;
    let count = |keep: &dyn Fn(&Event) -> Option<u64>, step: u64| {
        events.iter().filter(|(_, e, time)| keep(e).is_some_and(|event_time| ended(event_time, step, *time))).count() as u64
    };
    let bid = |e: &Event| if let Event::Bid(b) = e { Some(b.date_time) } else { None };
    match query {
        Query::Q0 | Query::Q1 | Query::Q2 | Query::Q3 | Query::Q4 | Query::Q6 => 0,
        Query::Q5 => count(&bid, SLIDE_MS),
        Query::Q7 => count(&bid, WINDOW_MS),
        Query::Q8 => count(
            &|e| match e {
                Event::Person(p) => Some(p.date_time),
                Event::Auction(a) => Some(a.date_time),
                Event::Bid(_) => None,
            },
            WINDOW_MS,
        ),
    }
}
