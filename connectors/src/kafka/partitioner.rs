//! Kafka's default partitioner for keyed records, so other clients agree on where a key lives.

/// The partition Apache Kafka's default partitioner (and librdkafka's `murmur2` / `murmur2_random`) picks for
/// `key`: the positive part of the key's murmur2 hash (seed `0x9747b28c`), modulo the partition count.
///
/// ```
/// use tributary_connectors::kafka::partition_for;
/// // Kafka's own test vectors: murmur2("foobar") = -790332482, murmur2("abc") = 479470107, murmur2("21") =
/// // -973932308 (Java ints), so with 4 partitions they land on 2, 3 and 0.
/// assert_eq!(partition_for(b"foobar", 4), 2);
/// assert_eq!(partition_for(b"abc", 4), 3);
/// assert_eq!(partition_for(b"21", 4), 0);
/// ```
pub fn partition_for(key: &[u8], partitions: i32) -> i32 {
    let hash = murmur2::murmur2(key, murmur2::KAFKA_SEED) & 0x7fff_ffff;
    (hash % partitions.max(1) as u32) as i32
}

#[cfg(test)]
mod tests {
    /// Hashes from Apache Kafka's `UtilsTest.testMurmur2`, as Java ints.
    #[test]
    fn kafka_test_vectors() {
        for (key, expected) in [
            (&b"21"[..], -973932308i32),
            (b"foobar", -790332482),
            (b"a-little-bit-long-string", -985981536),
            (b"a-little-bit-longer-string", -1486304829),
            (b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8", -58897971),
            (b"abc", 479470107),
        ] {
            assert_eq!(murmur2::murmur2(key, murmur2::KAFKA_SEED) as i32, expected, "{}", String::from_utf8_lossy(key));
        }
    }
}
