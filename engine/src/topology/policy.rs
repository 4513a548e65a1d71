//! The error policy: what happens to a record that cannot be deserialized, processed or
//! produced. Nothing is ever dropped silently: `fail` stops the topology before the
//! record's offset is committed, `skip` logs and counts it, `dead_letter` writes the
//! original bytes to a topic with headers saying what went wrong and where.

use serde::Deserialize;

use super::error::ErrorClass;

/// What to do with a record that failed at one stage.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum OnError {
    /// Stop the topology; the record's offset is not committed, so it is read again.
    Fail,
    /// Log it, count it in the `skipped` metric, and go on.
    Skip,
    /// Write the original key, value and headers to this topic, plus error headers.
    DeadLetter(String),
}

impl OnError {
    /// The dead-letter topic, if this is `DeadLetter`.
    pub fn dead_letter_topic(&self) -> Option<&str> {
        match self {
            OnError::DeadLetter(t) => Some(t),
            _ => None,
        }
    }
}

/// A topology's error policy, one choice per stage.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ErrorPolicy {
    /// For bytes that do not decode.
    #[serde(default = "fail")]
    pub deserialization: OnError,
    /// For processors that fail or panic, and sinks that cannot serialize.
    #[serde(default = "fail")]
    pub processing: OnError,
    /// For records the broker does not accept.
    #[serde(default = "fail")]
    pub production: OnError,
}

fn fail() -> OnError {
    OnError::Fail
}

impl Default for ErrorPolicy {
    /// Fail on every stage, as Kafka Streams' default handlers do.
    fn default() -> Self {
        ErrorPolicy::all(OnError::Fail)
    }
}

impl ErrorPolicy {
    /// The same choice for every stage.
    pub fn all(on_error: OnError) -> Self {
        ErrorPolicy {
            deserialization: on_error.clone(),
            processing: on_error.clone(),
            production: on_error,
        }
    }

    /// Every stage dead-letters to `topic`.
    pub fn dead_letter(topic: impl Into<String>) -> Self {
        Self::all(OnError::DeadLetter(topic.into()))
    }

    /// The choice for one stage.
    pub fn for_class(&self, class: ErrorClass) -> &OnError {
        match class {
            ErrorClass::Deserialization => &self.deserialization,
            ErrorClass::Processing => &self.processing,
            ErrorClass::Production => &self.production,
        }
    }

    /// Every dead-letter topic the policy names.
    pub fn dead_letter_topics(&self) -> Vec<&str> {
        let mut topics: Vec<&str> = [&self.deserialization, &self.processing, &self.production]
            .into_iter()
            .filter_map(OnError::dead_letter_topic)
            .collect();
        topics.sort_unstable();
        topics.dedup();
        topics
    }
}

/// Header names on dead-lettered records.
pub mod headers {
    /// `deserialization`, `processing` or `production`.
    pub const ERROR_CLASS: &str = "engine.error.class";
    /// The error message.
    pub const ERROR_MESSAGE: &str = "engine.error.message";
    /// The field at fault, when known.
    pub const ERROR_FIELD: &str = "engine.error.field";
    /// The topic the record was read from (or was to be written to).
    pub const SOURCE_TOPIC: &str = "engine.source.topic";
    /// Its partition.
    pub const SOURCE_PARTITION: &str = "engine.source.partition";
    /// Its offset.
    pub const SOURCE_OFFSET: &str = "engine.source.offset";
    /// Its timestamp.
    pub const SOURCE_TIMESTAMP: &str = "engine.source.timestamp";
    /// The application id of the topology that gave up on it.
    pub const APPLICATION_ID: &str = "engine.application.id";
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policy_parses_from_toml_and_refuses_unknown_keys() {
        let p: ErrorPolicy =
            toml::from_str("deserialization = { dead_letter = \"x.dlq\" }\nprocessing = \"skip\"")
                .unwrap();
        assert_eq!(p.deserialization, OnError::DeadLetter("x.dlq".into()));
        assert_eq!(p.processing, OnError::Skip);
        assert_eq!(p.production, OnError::Fail);
        let err = toml::from_str::<ErrorPolicy>("serialization = \"skip\"").unwrap_err();
        assert!(err.to_string().contains("unknown field"), "{err}");
    }

    #[test]
    fn dead_letter_topics_are_listed_once() {
        let mut p = ErrorPolicy::dead_letter("a");
        p.production = OnError::DeadLetter("b".into());
        assert_eq!(p.dead_letter_topics(), vec!["a", "b"]);
    }
}
