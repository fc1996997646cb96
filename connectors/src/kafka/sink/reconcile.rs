//! Reconciling an output partition with what an earlier run wrote after the last commit.
//!
//! A commit says, per output partition, that the records before offset `O` are the output up to time `base`.
//! Records from `O` to the partition's end `E` (the *suffix*) were written later: by an interrupted run before its
//! next commit, by a bounded run's provisional results, or by a run that stopped with some of them unreconciled.
//! They are what a reader of the topic sees now, so the restarted run does not write again what they already
//! say, and corrects what they say wrongly:
//! - **Upsert**: for each key in the suffix, the run follows the key's true value (all of its regenerated
//!   updates) and writes nothing for it until it has passed the time of the key's last suffix record (its Kafka
//!   timestamp, which the sink sets to the output's time); then it writes the true value if the suffix's differs.
//! - **Changelog**: the same per key, with diffs: once past the key's last suffix time it writes, per value, the
//!   regenerated diffs since `base` minus the suffix's.
//! - **Append**: each regenerated addition after `base` that the suffix holds is not written again (as a
//!   multiset); additions the suffix holds that the run passes (by their timestamp) without regenerating stay
//!   (appends cannot be taken back).
//!
//! Keys not in the suffix are written as usual after `base`. A partition whose suffix keys are all resolved (and
//! whose suffix appends are all regenerated or passed) is consistent again: its position in the next commit
//! moves past everything written. Until then it stays where the last commit put it, so a crash in between
//! reconciles again from there.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use rdkafka::consumer::Consumer;
use rdkafka::message::{Headers, Timestamp};
use rdkafka::{Message, Offset, TopicPartitionList};

use super::SinkFormat;
use super::format::{embed, envelope};

/// How long reading a suffix may make no progress before it fails.
const STALL: Duration = Duration::from_secs(30);

/// The header an upsert record of a job with checkpoints carries when its key had a value before: that value.
/// Without the header the key had none (a header without a value: several, which the run then regenerates).
/// For the first record of a key in a suffix it is the key's value as of the commit, so the run knows it without
/// regenerating the key's whole history (a run restored from a checkpoint regenerates only what changed after
/// the checkpoint). Written only with checkpoints: records of a run without them say nothing.
pub(super) const PRE_IMAGE: &str = "tributary.pre";

/// A record to write: key, value (`None`: a tombstone), time.
pub(super) type Out = (Vec<u8>, Option<Vec<u8>>, u64);

/// What the suffix of one output partition says, and what the run has regenerated for its keys.
#[derive(Debug, Default)]
pub(super) struct Suffix {
    /// Upsert: per key, the value the suffix shows last, its time, and the key's regenerated values.
    upsert: HashMap<Vec<u8>, UpsertKey>,
    /// Changelog: per key, the suffix's diffs per (embedded) value, its last time, and the regenerated diffs.
    changelog: HashMap<Vec<u8>, ChangelogKey>,
    /// Append: how many times each (key, value) is in the suffix and not yet regenerated.
    append: HashMap<(Vec<u8>, Vec<u8>), u64>,
    /// Append: the suffix's records by their time, until regenerated or passed.
    append_by_time: BTreeMap<u64, Vec<(Vec<u8>, Vec<u8>)>>,
    /// Append: suffix records neither regenerated nor passed yet.
    append_open: u64,
    /// Upsert and changelog keys by the time of their last suffix record.
    by_time: BTreeMap<u64, Vec<Vec<u8>>>,
    /// Records read.
    pub(super) records: u64,
}

#[derive(Debug)]
struct UpsertKey {
    shows: Option<Vec<u8>>,
    until: u64,
    truth: BTreeMap<Vec<u8>, isize>,
    /// `truth` started from the key's value as of the commit (its first suffix record's pre-image): only
    /// updates after the commit's time count.
    from_pre_image: bool,
}

#[derive(Debug)]
struct ChangelogKey {
    shows: HashMap<String, isize>,
    until: u64,
    regenerated: HashMap<String, isize>,
}

#[derive(serde::Deserialize)]
struct Envelope<'a> {
    #[serde(borrow)]
    value: &'a serde_json::value::RawValue,
    diff: isize,
    time: u64,
}

impl Suffix {
    /// Reads records `[from, to)` of `topic/partition`. `base` is the commit's time for the partition: suffix
    /// records without a usable time are resolved right after it.
    pub(super) fn read(
        consumer: &crate::kafka::admin::Reader,
        topic: &str,
        partition: i32,
        (from, to): (i64, i64),
        format: SinkFormat,
        base: Option<u64>,
        pre_images: bool,
    ) -> Result<Suffix, String> {
        let mut suffix = Suffix::default();
        if to <= from {
            return Ok(suffix);
        }
        let mut assignment = TopicPartitionList::new();
        assignment.add_partition_offset(topic, partition, Offset::Offset(from)).map_err(|e| e.to_string())?;
        consumer.assign(&assignment).map_err(|e| e.to_string())?;
        let unknown_time = base.map_or(0, |b| b.saturating_add(1));
        let mut last_progress = Instant::now();
        let mut next = from;
        while next < to {
            if last_progress.elapsed() > STALL {
                return Err(format!(
                    "reading {topic}/{partition} from offset {from} to {to} made no progress for {STALL:?} (stuck at {next})"
                ));
            }
            let message = match consumer.poll(Duration::from_millis(100)) {
                None => continue,
                Some(Ok(message)) => message,
                // Connection errors are transient (librdkafka reconnects); only a stall ends the read.
                Some(Err(e)) => {
                    tracing::debug!(topic, partition, "reading the suffix: {e}");
                    continue;
                }
            };
            if message.offset() >= to {
                break;
            }
            next = message.offset() + 1;
            last_progress = Instant::now();
            suffix.records += 1;
            let key = message.key().unwrap_or_default().to_vec();
            let value = message.payload().map(<[u8]>::to_vec);
            // The sink stamps records with their output time; a topic that overwrites timestamps
            // (LogAppendTime) gives no usable time.
            let stamped = match message.timestamp() {
                Timestamp::CreateTime(ms) if ms >= 0 => ms as u64,
                _ => unknown_time,
            };
            match format {
                SinkFormat::Upsert => {
                    let header = message.headers().and_then(|headers| headers.iter().find(|h| h.key == PRE_IMAGE));
                    let pre = match header {
                        None if pre_images => Some(None),
                        None => None,
                        Some(header) => header.value.map(|v| Some(v.to_vec())),
                    };
                    suffix.add_upsert(key, value, stamped, pre)
                }
                SinkFormat::Changelog => {
                    let value = value
                        .ok_or_else(|| format!("{topic}/{partition} at offset {}: a changelog record without a value", message.offset()))?;
                    let envelope: Envelope<'_> = serde_json::from_slice(&value)
                        .map_err(|e| format!("{topic}/{partition} at offset {}: not a changelog record ({e})", message.offset()))?;
                    suffix.add_changelog(key, envelope.value.get().to_owned(), envelope.diff, envelope.time);
                }
                SinkFormat::Append => suffix.add_append(key, value.unwrap_or_default(), stamped),
            }
        }
        suffix.index();
        Ok(suffix)
    }

    fn add_upsert(&mut self, key: Vec<u8>, value: Option<Vec<u8>>, time: u64, pre: Option<Option<Vec<u8>>>) {
        let entry = self.upsert.entry(key.clone()).or_insert_with(|| {
            let from_pre_image = pre.is_some();
            let truth = pre.flatten().map(|v| BTreeMap::from([(v, 1)])).unwrap_or_default();
            UpsertKey { shows: None, until: 0, truth, from_pre_image }
        });
        entry.shows = value;
        entry.until = entry.until.max(time);
    }

    fn add_changelog(&mut self, key: Vec<u8>, value: String, diff: isize, time: u64) {
        let entry = self.changelog.entry(key.clone()).or_insert_with(|| ChangelogKey {
            shows: HashMap::new(),
            until: 0,
            regenerated: HashMap::new(),
        });
        // A diff read from the topic: a foreign or corrupt record may hold any number, so saturate (it then
        // never reconciles, and the sink refuses the topic) rather than overflow.
        let shown = entry.shows.entry(value).or_default();
        *shown = shown.saturating_add(diff);
        entry.until = entry.until.max(time);
    }

    fn add_append(&mut self, key: Vec<u8>, value: Vec<u8>, time: u64) {
        *self.append.entry((key.clone(), value.clone())).or_default() += 1;
        self.append_by_time.entry(time).or_default().push((key, value));
        self.append_open += 1;
    }

    /// Indexes the keys by the time of their last suffix record, once the suffix is read.
    fn index(&mut self) {
        self.by_time.clear();
        for (key, entry) in &self.upsert {
            self.by_time.entry(entry.until).or_default().push(key.clone());
        }
        for (key, entry) in &self.changelog {
            self.by_time.entry(entry.until).or_default().push(key.clone());
        }
        for keys in self.by_time.values_mut() {
            keys.sort();
        }
    }

    /// Whether every suffix key is resolved, and every suffix append regenerated or passed: the partition's
    /// content is then the run's own up to the time processed.
    pub(super) fn is_resolved(&self) -> bool {
        self.upsert.is_empty() && self.changelog.is_empty() && self.append_open == 0
    }

    /// Whether `key` is one the suffix holds back.
    pub(super) fn holds(&self, key: &[u8]) -> bool {
        (!self.upsert.is_empty() && self.upsert.contains_key(key)) || (!self.changelog.is_empty() && self.changelog.contains_key(key))
    }

    /// Upsert: takes a suffix key's updates at `time` (every time, also up to `base`); resolves it once `time`
    /// has passed its last suffix record.
    pub(super) fn upsert(&mut self, time: u64, base: Option<u64>, key: &[u8], updates: &[(&[u8], isize)], out: &mut Vec<Out>) {
        let Some(entry) = self.upsert.get_mut(key) else { return };
        let counted = !entry.from_pre_image || base.is_none_or(|b| time > b);
        for (value, diff) in updates.iter().filter(|_| counted) {
            let count = entry.truth.entry(value.to_vec()).or_default();
            *count += diff;
            if *count == 0 {
                entry.truth.remove(*value);
            }
        }
        if time >= entry.until && base.is_none_or(|b| time > b) {
            #[allow(clippy::expect_used, reason = "`key` was found in the map just above")]
            let entry = self.upsert.remove(key).expect("present");
            resolve_upsert(key.to_vec(), entry, time, out);
        }
    }

    /// Changelog: takes a suffix key's updates after `base`; resolves it once `time` has passed its last suffix
    /// record.
    pub(super) fn changelog(&mut self, time: u64, base: Option<u64>, key: &[u8], updates: &[(&[u8], isize)], out: &mut Vec<Out>) {
        let Some(entry) = self.changelog.get_mut(key) else { return };
        if base.is_some_and(|b| time <= b) {
            return;
        }
        for (value, diff) in updates {
            *entry.regenerated.entry(embed(value)).or_default() += diff;
        }
        if time >= entry.until {
            #[allow(clippy::expect_used, reason = "`key` was found in the map just above")]
            let entry = self.changelog.remove(key).expect("present");
            resolve_changelog(key.to_vec(), entry, time, out);
        }
    }

    /// Append: whether one addition of `(key, value)` is already in the suffix (and so not to be written again).
    pub(super) fn appended(&mut self, key: &[u8], value: &[u8]) -> bool {
        if self.append.is_empty() {
            return false;
        }
        match self.append.get_mut(&(key.to_vec(), value.to_vec())) {
            Some(count) if *count > 0 => {
                *count -= 1;
                self.append_open -= 1;
                true
            }
            _ => false,
        }
    }

    /// Resolves the keys whose last suffix record is at or before `time`, every time up to which is complete.
    pub(super) fn resolve_through(&mut self, time: u64, base: Option<u64>, out: &mut Vec<Out>) {
        if base.is_some_and(|b| time <= b) {
            return;
        }
        // Appends the run has passed without regenerating stay in the topic (appends cannot be taken back); they
        // no longer hold the partition's position.
        while let Some(entry) = self.append_by_time.first_entry() {
            if *entry.key() > time {
                break;
            }
            for record in entry.remove() {
                if let Some(count) = self.append.get_mut(&record).filter(|c| **c > 0) {
                    *count -= 1;
                    self.append_open -= 1;
                }
            }
        }
        while let Some(entry) = self.by_time.first_entry() {
            if *entry.key() > time {
                break;
            }
            for key in entry.remove() {
                self.resolve_key(key, time, out);
            }
        }
    }

    /// Resolves every remaining key at `time` (the input is done).
    pub(super) fn resolve_all(&mut self, time: u64, out: &mut Vec<Out>) {
        self.append.clear();
        self.append_by_time.clear();
        self.append_open = 0;
        for (_, keys) in std::mem::take(&mut self.by_time) {
            for key in keys {
                self.resolve_key(key, time, out);
            }
        }
    }

    fn resolve_key(&mut self, key: Vec<u8>, time: u64, out: &mut Vec<Out>) {
        if let Some(entry) = self.upsert.remove(&key) {
            resolve_upsert(key, entry, time, out);
        } else if let Some(entry) = self.changelog.remove(&key) {
            resolve_changelog(key, entry, time, out);
        }
    }
}

fn resolve_upsert(key: Vec<u8>, entry: UpsertKey, time: u64, out: &mut Vec<Out>) {
    let present: Vec<Vec<u8>> = entry.truth.into_iter().filter(|(_, n)| *n > 0).map(|(v, _)| v).collect();
    match (present.as_slice(), &entry.shows) {
        ([], None) => {}
        ([only], Some(shown)) if only == shown => {}
        ([], Some(_)) => out.push((key, None, time)),
        (values, _) => out.extend(values.iter().map(|v| (key.clone(), Some(v.clone()), time))),
    }
}

fn resolve_changelog(key: Vec<u8>, entry: ChangelogKey, time: u64, out: &mut Vec<Out>) {
    let mut net: BTreeMap<String, isize> = BTreeMap::new();
    for (value, diff) in entry.regenerated {
        *net.entry(value).or_default() += diff;
    }
    for (value, diff) in entry.shows {
        *net.entry(value).or_default() -= diff;
    }
    for (value, diff) in net.into_iter().filter(|(_, d)| *d != 0) {
        out.push((key.clone(), Some(envelope(&value, diff, time)), time));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upsert_keys_wait_for_their_suffix_time_and_write_only_what_differs() {
        let mut suffix = Suffix::default();
        suffix.add_upsert(b"a".to_vec(), Some(b"2".to_vec()), 10, None);
        suffix.add_upsert(b"b".to_vec(), Some(b"5".to_vec()), 10, None);
        suffix.index();
        let mut out = Vec::new();
        // Regenerated: a = 1 at 5, a = 2 at 10 (what the suffix says); b = 4 at 6 (the suffix's 5 is wrong).
        suffix.upsert(5, Some(3), b"a", &[(b"1", 1)], &mut out);
        suffix.upsert(6, Some(3), b"b", &[(b"4", 1)], &mut out);
        assert!(out.is_empty(), "nothing before the suffix's time");
        suffix.upsert(10, Some(3), b"a", &[(b"1", -1), (b"2", 1)], &mut out);
        assert!(out.is_empty(), "a is what the suffix shows");
        suffix.resolve_through(10, Some(3), &mut out);
        assert_eq!(out, vec![(b"b".to_vec(), Some(b"4".to_vec()), 10)]);
        assert!(suffix.is_resolved());
    }

    #[test]
    fn an_upsert_key_with_a_pre_image_needs_only_the_updates_after_the_commit() {
        // The commit (base 3) showed a = 1; the suffix wrote a = 2 at 10 (pre-image 1). A run restored from a
        // checkpoint regenerates nothing for `a` after the commit: a goes back to 1, not to a tombstone.
        let mut suffix = Suffix::default();
        suffix.add_upsert(b"a".to_vec(), Some(b"2".to_vec()), 10, Some(Some(b"1".to_vec())));
        suffix.add_upsert(b"n".to_vec(), Some(b"7".to_vec()), 10, Some(None));
        suffix.index();
        let mut out = Vec::new();
        // A regenerated update at or before the commit is already in the pre-image.
        suffix.upsert(2, Some(3), b"a", &[(b"1", 1)], &mut out);
        suffix.resolve_through(10, Some(3), &mut out);
        assert_eq!(out, vec![(b"a".to_vec(), Some(b"1".to_vec()), 10), (b"n".to_vec(), None, 10)]);
    }

    #[test]
    fn changelog_keys_write_the_regenerated_diffs_minus_the_suffixes() {
        let mut suffix = Suffix::default();
        suffix.add_changelog(b"k".to_vec(), "1".into(), 1, 8);
        suffix.add_changelog(b"k".to_vec(), "1".into(), -1, 9);
        suffix.add_changelog(b"k".to_vec(), "2".into(), 1, 9);
        suffix.index();
        let mut out = Vec::new();
        suffix.changelog(8, Some(7), b"k", &[(b"1", 1)], &mut out);
        suffix.changelog(9, Some(7), b"k", &[(b"1", -1), (b"3", 1)], &mut out);
        assert_eq!(out, vec![(b"k".to_vec(), Some(envelope("2", -1, 9)), 9), (b"k".to_vec(), Some(envelope("3", 1, 9)), 9)]);
    }

    #[test]
    fn appends_in_the_suffix_are_not_written_twice_and_hold_the_position_until_regenerated_or_passed() {
        let mut suffix = Suffix::default();
        suffix.add_append(b"k".to_vec(), b"v".to_vec(), 5);
        suffix.add_append(b"k".to_vec(), b"v".to_vec(), 9);
        suffix.add_append(b"x".to_vec(), b"y".to_vec(), 12);
        assert!(suffix.appended(b"k", b"v"));
        assert!(suffix.appended(b"k", b"v"));
        assert!(!suffix.appended(b"k", b"v"), "a third copy is new");
        let mut out = Vec::new();
        suffix.resolve_through(10, None, &mut out);
        assert!(!suffix.is_resolved(), "x/y at 12 is neither regenerated nor passed");
        suffix.resolve_through(12, None, &mut out);
        assert!(suffix.is_resolved() && out.is_empty(), "passed: it stays in the topic, the position may move");
    }
}
