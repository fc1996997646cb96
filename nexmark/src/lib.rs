//! Nexmark on Tributary: the benchmark every streaming engine reports, and an end-to-end test of the operators.
//!
//! - [`event`]: Person / Auction / Bid as our own ordered, hashable, serde types (JSON lines with a `type` tag).
//! - [`generator`]: the `nexmark` crate's generator (RisingWave's), split into logical partitions so that
//!   dataflow times, and so results, do not depend on the number of workers or processes; the sources' time
//!   model with the standard watermark delay of 4 s.
//! - [`queries`]: q0-q8 as dataflows over the event stream.
//! - [`reference`]: the same queries in plain Rust over the whole event vector, for tests.
//! - [`differential`]: q1, q3 and q5 written with differential dataflow alone: the benchmark's peer.
//! - [`Checksum`]: an order-independent digest of a result, the same however the result was computed.
//!
//! `examples/nexmark` runs a query in memory or from Kafka; `cargo xtask bench` measures them.
#![deny(missing_docs)]

pub mod differential;
pub mod event;
pub mod generator;
pub mod queries;
pub mod reference;

use std::hash::{DefaultHasher, Hash, Hasher};

pub use event::{Auction, Bid, Event, Person};
pub use generator::{Config, MAX_OUT_OF_ORDERNESS_MS, policy};
pub use queries::{Query, QueryStreams, Row, build};

/// An order-independent digest of a multiset of rows: the wrapping sum of each row's hash times its
/// multiplicity. Summing the digests of parts gives the digest of the whole, so workers digest their own updates
/// and the sums are added up; retractions subtract.
///
/// ```
/// use tributary_nexmark::{Checksum, Row};
/// let (a, b) = (Row::Q2 { auction: 123, price: 7 }, Row::Q2 { auction: 246, price: 9 });
/// let mut one = Checksum::default();
/// one.add(&a, 1);
/// one.add(&b, 1);
/// let mut other = Checksum::default();
/// other.add(&b, 2);
/// other.add(&a, 1);
/// other.add(&b, -1);
/// assert_eq!(one, other);
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Checksum {
    /// The digest.
    pub sum: u64,
    /// The number of rows (sum of multiplicities).
    pub rows: i64,
}

impl Checksum {
    /// Adds `row` with multiplicity `diff`.
    pub fn add(&mut self, row: &Row, diff: isize) {
        // SipHash with fixed keys: the same on every machine and run.
        let mut hasher = DefaultHasher::new();
        row.hash(&mut hasher);
        self.sum = self.sum.wrapping_add(hasher.finish().wrapping_mul(diff as u64));
        self.rows += diff as i64;
    }

    /// Adds another digest (of another part of the same result).
    pub fn merge(&mut self, other: Checksum) {
        self.sum = self.sum.wrapping_add(other.sum);
        self.rows += other.rows;
    }
}

impl std::fmt::Display for Checksum {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:016x}", self.sum)
    }
}
