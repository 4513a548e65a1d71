//! Records as topologies see them: a typed key and value with a timestamp and headers,
//! and the metadata that says where a record was read from.
//!
//! Depends on nothing else in the crate.

use std::sync::Arc;

/// Milliseconds since the Unix epoch, Kafka's timestamp unit.
pub type Timestamp = i64;

/// One Kafka header: a key and an optional (possibly null) value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Header {
    /// Header key.
    pub key: String,
    /// Header value; `None` is a null header value.
    pub value: Option<Vec<u8>>,
}

/// The headers of a record, in order; keys may repeat, as in Kafka.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Headers(Vec<Header>);

impl Headers {
    /// No headers.
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends a header, keeping any earlier one with the same key.
    pub fn add(&mut self, key: impl Into<String>, value: impl Into<Option<Vec<u8>>>) {
        self.0.push(Header {
            key: key.into(),
            value: value.into(),
        });
    }

    /// Builder-style [`Headers::add`].
    pub fn with(mut self, key: impl Into<String>, value: impl AsRef<[u8]>) -> Self {
        self.add(key, Some(value.as_ref().to_vec()));
        self
    }

    /// Removes every header with this key.
    pub fn remove(&mut self, key: &str) {
        self.0.retain(|h| h.key != key);
    }

    /// The value of the last header with this key (Kafka clients' `lastHeader`).
    pub fn last(&self, key: &str) -> Option<&[u8]> {
        self.0
            .iter()
            .rev()
            .find(|h| h.key == key)
            .and_then(|h| h.value.as_deref())
    }

    /// The value of the last header with this key as UTF-8 text, if it is.
    pub fn last_str(&self, key: &str) -> Option<&str> {
        self.last(key).and_then(|v| std::str::from_utf8(v).ok())
    }

    /// All headers in order.
    pub fn iter(&self) -> impl Iterator<Item = &Header> {
        self.0.iter()
    }

    /// Number of headers.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// True when there are no headers.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl FromIterator<Header> for Headers {
    fn from_iter<I: IntoIterator<Item = Header>>(iter: I) -> Self {
        Headers(iter.into_iter().collect())
    }
}

/// A typed record flowing through a topology.
///
/// Operators that produce a new record from an old one keep its timestamp and headers,
/// as Kafka Streams does.
#[derive(Clone, Debug, PartialEq)]
pub struct Record<K, V> {
    /// The key.
    pub key: K,
    /// The value.
    pub value: V,
    /// Event time in milliseconds since the epoch.
    pub timestamp: Timestamp,
    /// Headers, carried from input to output.
    pub headers: Headers,
}

impl<K, V> Record<K, V> {
    /// A record with no headers.
    pub fn new(key: K, value: V, timestamp: Timestamp) -> Self {
        Record {
            key,
            value,
            timestamp,
            headers: Headers::new(),
        }
    }

    /// The same record with a new key and value, keeping timestamp and headers.
    pub fn with_key_value<K2, V2>(self, key: K2, value: V2) -> Record<K2, V2> {
        Record {
            key,
            value,
            timestamp: self.timestamp,
            headers: self.headers,
        }
    }

    /// The same record with another value.
    pub fn with_value<V2>(self, value: V2) -> Record<K, V2> {
        Record {
            key: self.key,
            value,
            timestamp: self.timestamp,
            headers: self.headers,
        }
    }

    /// The same record with another key.
    pub fn with_key<K2>(self, key: K2) -> Record<K2, V> {
        Record {
            key,
            value: self.value,
            timestamp: self.timestamp,
            headers: self.headers,
        }
    }

    /// The same record with another timestamp.
    pub fn with_timestamp(mut self, timestamp: Timestamp) -> Self {
        self.timestamp = timestamp;
        self
    }
}

/// Where a consumed record came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecordMetadata {
    /// Source topic.
    pub topic: Arc<str>,
    /// Source partition.
    pub partition: i32,
    /// Offset in the source partition.
    pub offset: i64,
}

/// Bytes a topology wants written to a topic: the unit between a sink and the producer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProducedRecord {
    /// Destination topic.
    pub topic: Arc<str>,
    /// Destination partition; `None` lets the producer's partitioner choose by key.
    pub partition: Option<i32>,
    /// Serialized key; `None` is a null key.
    pub key: Option<Vec<u8>>,
    /// Serialized value; `None` is a null value (a tombstone).
    pub value: Option<Vec<u8>>,
    /// Record timestamp.
    pub timestamp: Timestamp,
    /// Record headers.
    pub headers: Headers,
}

/// A consumed record before deserialization, borrowed from the consumer.
#[derive(Clone, Debug)]
pub struct RawRecord<'a> {
    /// Source topic.
    pub topic: &'a str,
    /// Source partition.
    pub partition: i32,
    /// Offset in the partition.
    pub offset: i64,
    /// Record timestamp.
    pub timestamp: Timestamp,
    /// Key bytes; `None` is a null key.
    pub key: Option<&'a [u8]>,
    /// Value bytes; `None` is a null value.
    pub value: Option<&'a [u8]>,
    /// Headers.
    pub headers: Headers,
}
