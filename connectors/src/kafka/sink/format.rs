//! Encodings the sink writes: the changelog envelope, and the JSON encoder for keys and values.

use serde::Serialize;

/// A value as the changelog envelope embeds it: as JSON when it is JSON, else as a JSON string.
pub(super) fn embed(value: &[u8]) -> String {
    match serde_json::from_slice::<&serde_json::value::RawValue>(value) {
        Ok(raw) => raw.get().to_owned(),
        Err(_) => serde_json::to_string(&String::from_utf8_lossy(value)).unwrap_or_else(|_| "null".into()),
    }
}

/// `{"value": <embedded>, "diff": d, "time": t}`.
pub(super) fn envelope(embedded: &str, diff: isize, time: u64) -> Vec<u8> {
    format!("{{\"value\":{embedded},\"diff\":{diff},\"time\":{time}}}").into_bytes()
}

/// JSON bytes of a key or value. Plain data always serializes; only maps with non-string keys fail, a
/// programming error the message names.
pub(super) fn to_json<T: Serialize>(x: &T, what: &str) -> Vec<u8> {
    serde_json::to_vec(x).unwrap_or_else(|e| crate::error::stop(super::SinkError::Encode { what: what.to_owned(), reason: e.to_string() }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changelog_envelopes_embed_json_and_quote_the_rest() {
        assert_eq!(envelope(&embed(b"{\"n\":1}"), -1, 7), b"{\"value\":{\"n\":1},\"diff\":-1,\"time\":7}".to_vec());
        assert_eq!(envelope(&embed(b"plain \"text\""), 2, 0), b"{\"value\":\"plain \\\"text\\\"\",\"diff\":2,\"time\":0}".to_vec());
    }
}
