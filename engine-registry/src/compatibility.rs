//! Compatibility levels and the Avro schema-evolution checks behind them.
//!
//! Depends on `super::error` and on the Avro codec's schema resolution: a reader can read a
//! writer exactly when [`DecodePlan::strict_from_avro`] compiles the pair, which matches
//! Apache Avro for Java's `SchemaCompatibility` (what Confluent's registry uses), as the
//! `compatibility_oracle` test checks on random evolutions. apache-avro's own
//! `SchemaCompatibility` is not used: it refuses an enum that dropped symbols behind a
//! default, and every pair with a `decimal`. Pure functions: no I/O, no locking.

use std::fmt;
use std::str::FromStr;

use apache_avro::Schema;
use serde::{Deserialize, Serialize};

use super::error::RegistryError;
use engine_avro::DecodePlan;

/// A subject's (or the registry's global) schema-evolution rule, with Confluent's names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Compatibility {
    /// A new schema can read data written with the latest one.
    #[default]
    Backward,
    /// A new schema can read data written with every earlier one.
    BackwardTransitive,
    /// The latest schema can read data written with the new one.
    Forward,
    /// Every earlier schema can read data written with the new one.
    ForwardTransitive,
    /// Backward and forward against the latest schema.
    Full,
    /// Backward and forward against every earlier schema.
    FullTransitive,
    /// No check.
    None,
}

impl Compatibility {
    /// Every level, in Confluent's documentation order.
    pub const ALL: [Compatibility; 7] = [
        Self::Backward,
        Self::BackwardTransitive,
        Self::Forward,
        Self::ForwardTransitive,
        Self::Full,
        Self::FullTransitive,
        Self::None,
    ];

    /// Confluent's string form, e.g. `BACKWARD_TRANSITIVE`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Backward => "BACKWARD",
            Self::BackwardTransitive => "BACKWARD_TRANSITIVE",
            Self::Forward => "FORWARD",
            Self::ForwardTransitive => "FORWARD_TRANSITIVE",
            Self::Full => "FULL",
            Self::FullTransitive => "FULL_TRANSITIVE",
            Self::None => "NONE",
        }
    }

    /// Whether the check runs against all earlier versions instead of only the latest.
    pub fn is_transitive(self) -> bool {
        matches!(
            self,
            Self::BackwardTransitive | Self::ForwardTransitive | Self::FullTransitive
        )
    }

    fn checks_backward(self) -> bool {
        matches!(
            self,
            Self::Backward | Self::BackwardTransitive | Self::Full | Self::FullTransitive
        )
    }

    fn checks_forward(self) -> bool {
        matches!(
            self,
            Self::Forward | Self::ForwardTransitive | Self::Full | Self::FullTransitive
        )
    }
}

impl fmt::Display for Compatibility {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Compatibility {
    type Err = RegistryError;

    /// Case-insensitive, because clients such as confluent-kafka upper-case but humans don't.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let wanted = s.trim();
        Self::ALL
            .into_iter()
            .find(|level| level.as_str().eq_ignore_ascii_case(wanted))
            .ok_or_else(|| RegistryError::InvalidCompatibility {
                level: s.to_owned(),
            })
    }
}

/// The outcome of a compatibility check.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct CompatibilityReport {
    /// Whether the candidate schema satisfies the rule.
    pub is_compatible: bool,
    /// Why not, one message per violated check (empty when compatible).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub messages: Vec<String>,
}

/// Checks `candidate` against `existing` (oldest first) under `level`.
///
/// Callers pass every existing version; non-transitive levels look at the last one only,
/// so the selection rule lives here rather than at each call site.
pub fn check(
    level: Compatibility,
    candidate: &Schema,
    existing: &[&Schema],
) -> CompatibilityReport {
    let targets: &[&Schema] = if level.is_transitive() {
        existing
    } else {
        existing.last().map_or(&[], std::slice::from_ref)
    };
    let mut messages = Vec::new();
    for (index, old) in targets.iter().enumerate() {
        let which = if level.is_transitive() {
            format!("version at position {} of {}", index + 1, targets.len())
        } else {
            "the latest version".to_owned()
        };
        if level.checks_backward()
            && let Err(e) = DecodePlan::strict_from_avro(old, candidate)
        {
            messages.push(format!(
                "{level}: the new schema cannot read data written with {which}: {e}"
            ));
        }
        if level.checks_forward()
            && let Err(e) = DecodePlan::strict_from_avro(candidate, old)
        {
            messages.push(format!(
                "{level}: {which} cannot read data written with the new schema: {e}"
            ));
        }
    }
    CompatibilityReport {
        is_compatible: messages.is_empty(),
        messages,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn string_forms_round_trip() {
        for level in Compatibility::ALL {
            let json = serde_json::to_string(&level).unwrap();
            assert_eq!(json, format!("\"{}\"", level.as_str()));
            assert_eq!(serde_json::from_str::<Compatibility>(&json).unwrap(), level);
            assert_eq!(level.to_string().parse::<Compatibility>().unwrap(), level);
        }
        assert_eq!(
            "full_transitive".parse::<Compatibility>().unwrap(),
            Compatibility::FullTransitive
        );
        let err = "SIDEWAYS".parse::<Compatibility>().unwrap_err();
        assert_eq!(err.error_code(), Some(42203));
    }

    #[test]
    fn latest_only_ignores_older_versions() {
        let v1 = Schema::parse_str(
            r#"{"type":"record","name":"R","fields":[{"name":"a","type":"int"}]}"#,
        )
        .unwrap();
        let v2 = Schema::parse_str(r#"{"type":"record","name":"R","fields":[]}"#).unwrap();
        let v3 = Schema::parse_str(
            r#"{"type":"record","name":"R","fields":[{"name":"a","type":"string","default":"x"}]}"#,
        )
        .unwrap();
        // v3 reads v2 data (a defaults) but not v1 data (int -> string is not a promotion).
        assert!(check(Compatibility::Backward, &v3, &[&v1, &v2]).is_compatible);
        let report = check(Compatibility::BackwardTransitive, &v3, &[&v1, &v2]);
        assert!(!report.is_compatible);
        assert_eq!(report.messages.len(), 1, "{:?}", report.messages);
    }

    fn schema(json: &str) -> Schema {
        Schema::parse_str(json).unwrap()
    }

    /// Avro 1.9+ enum defaults: data with a symbol the reader dropped reads as the default,
    /// so Java's check (and Confluent's registry) accepts the removal under BACKWARD and
    /// FULL; FORWARD still fails, because the old reader has no default for new symbols.
    #[test]
    fn an_enum_may_drop_symbols_behind_a_default() {
        let old = schema(r#"{"type":"enum","name":"E","symbols":["A","B","C"]}"#);
        let new = schema(r#"{"type":"enum","name":"E","symbols":["A","B"],"default":"A"}"#);
        assert!(check(Compatibility::Backward, &new, &[&old]).is_compatible);
        assert!(check(Compatibility::BackwardTransitive, &new, &[&old]).is_compatible);
        // FULL: the old schema reads the new one's data too (it has every new symbol).
        assert!(check(Compatibility::Full, &new, &[&old]).is_compatible);
        let without_default = schema(r#"{"type":"enum","name":"E","symbols":["A","B"]}"#);
        let report = check(Compatibility::Backward, &without_default, &[&old]);
        assert!(!report.is_compatible);
        assert!(report.messages[0].contains("[C]"), "{:?}", report.messages);
        // Adding a symbol the old reader lacks breaks FORWARD unless it has a default.
        let more = schema(r#"{"type":"enum","name":"E","symbols":["A","B","C","D"]}"#);
        assert!(!check(Compatibility::Forward, &more, &[&old]).is_compatible);
    }

    /// apache-avro's own check refused every pair with a decimal, even identical ones.
    #[test]
    fn a_decimal_field_is_compatible_with_itself() {
        let v1 = schema(
            r#"{"type":"record","name":"R","fields":[{"name":"amount","type":{"type":"bytes","logicalType":"decimal","precision":10,"scale":2}}]}"#,
        );
        let v2 = schema(
            r#"{"type":"record","name":"R","fields":[{"name":"amount","type":{"type":"bytes","logicalType":"decimal","precision":10,"scale":2}},{"name":"note","type":"string","default":""}]}"#,
        );
        assert!(check(Compatibility::FullTransitive, &v2, &[&v1]).is_compatible);
    }

    /// A writer union branch the reader cannot take makes the pair incompatible, naming
    /// the field, even though data without that branch would read.
    #[test]
    fn a_narrowed_union_is_refused_with_the_field() {
        let old = schema(
            r#"{"type":"record","name":"R","fields":[{"name":"v","type":["null","int","string"]}]}"#,
        );
        let new = schema(
            r#"{"type":"record","name":"R","fields":[{"name":"v","type":["null","long"]}]}"#,
        );
        let report = check(Compatibility::Backward, &new, &[&old]);
        assert!(!report.is_compatible);
        assert!(report.messages[0].contains("v"), "{:?}", report.messages);
        assert!(
            report.messages[0].contains("string"),
            "{:?}",
            report.messages
        );
        assert!(!check(Compatibility::Forward, &new, &[&old]).is_compatible);
    }

    /// An unqualified alias is in the reader's namespace (Java's rule): it does not match a
    /// writer of the same short name in another namespace.
    #[test]
    fn an_alias_names_a_type_in_the_readers_namespace() {
        let old = schema(r#"{"type":"record","name":"Old","namespace":"a","fields":[]}"#);
        let renamed = |namespace: &str, alias: &str| {
            schema(&format!(
                r#"{{"type":"record","name":"New","namespace":"{namespace}","aliases":["{alias}"],"fields":[]}}"#
            ))
        };
        assert!(check(Compatibility::Backward, &renamed("a", "Old"), &[&old]).is_compatible);
        assert!(check(Compatibility::Backward, &renamed("b", "a.Old"), &[&old]).is_compatible);
        assert!(!check(Compatibility::Backward, &renamed("b", "Old"), &[&old]).is_compatible);
    }
}
