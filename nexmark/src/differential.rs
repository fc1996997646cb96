//! The benchmark's peer: q1, q3 and q5 as a user would write them with differential dataflow alone, over the
//! same event stream, producing the same rows (so the same checksum).
//!
//! q1 and q3 are a map and a join either way. q5 shows the difference: without an event-time window operator,
//! each bid is exploded into its hopping windows as `(auction, window start)` records, counted with `count`,
//! the maximum per window found with `reduce`, and joined back; nothing is ever released, and every count is
//! re-emitted whenever it changes instead of once when its window closes.

use differential_dataflow::VecCollection;
use differential_dataflow::collection::AsCollection;
use timely::dataflow::operators::vec::Map;

use crate::event::Event;
use crate::queries::{Query, Row, SLIDE_MS, Updates, WINDOW_MS};

/// The differential-only version of `query`, for q1, q3 and q5; `None` for the others.
pub fn build<'scope>(query: Query, events: Updates<'scope, Event>) -> Option<VecCollection<'scope, u64, Row, isize>> {
    let events = events.map(|(e, t, d)| (e.value, t, d)).as_collection();
    match query {
        Query::Q1 => Some(events.flat_map(|e| match e {
            Event::Bid(b) => Some(Row::Q1 { auction: b.auction, bidder: b.bidder, price: b.price * 908 / 1000, date_time: b.date_time }),
            _ => None,
        })),
        Query::Q3 => {
            let sellers = events.clone().flat_map(|e| match e {
                Event::Person(p) if matches!(p.state.as_str(), "or" | "id" | "ca") => Some((p.id, (p.name, p.city, p.state))),
                _ => None,
            });
            let items = events.flat_map(|e| match e {
                Event::Auction(a) if a.category == 10 => Some((a.seller, a.id)),
                _ => None,
            });
            Some(sellers.join(items).map(|(_, ((name, city, state), auction))| Row::Q3 { name, city, state, auction }))
        }
        Query::Q5 => {
            // Each bid in every window it falls in; a window's counts only count bids not later than its end.
            let in_windows = events
                .inner
                .flat_map(|(e, t, d)| {
                    let bid = match e {
                        Event::Bid(b) => Some(b),
                        _ => None,
                    };
                    bid.into_iter().flat_map(move |b| {
                        let last = b.date_time - b.date_time % SLIDE_MS;
                        let first = (b.date_time + 1).saturating_sub(WINDOW_MS).div_ceil(SLIDE_MS) * SLIDE_MS;
                        (first..=last)
                            .step_by(SLIDE_MS as usize)
                            .filter(move |start| start + WINDOW_MS > t)
                            .map(move |start| ((start, b.auction), t, d))
                    })
                })
                .as_collection();
            let counts = in_windows.count();
            let top = counts.clone().map(|((start, _), n)| (start, n)).reduce(|_start, counts, out| {
                let top = counts.iter().map(|(n, _)| **n).max().expect("reduce sees a non-empty group");
                out.push((top, 1));
            });
            let rows = counts.map(|((start, auction), n)| ((start, n), auction)).semijoin(top).map(|((start, n), auction)| Row::Q5 {
                window_start: start,
                auction,
                bids: n as u64,
            });
            Some(rows)
        }
        _ => None,
    }
}
