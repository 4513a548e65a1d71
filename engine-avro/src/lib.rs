//! A fast, self-contained Avro binary codec built on serde.
//!
//! Schemas are parsed with apache-avro ([`Schema`]), then compiled once into
//! flat plans: an [`EncodePlan`] for writing any `serde::Serialize` value (or a
//! generic [`apache_avro::types::Value`]) and a [`DecodePlan`] per
//! (writer, reader) pair that performs full Avro schema resolution while
//! deserializing straight from the input bytes. Errors ([`AvroError`]) name the
//! field path of the offending value.
//!
//! Field-level `logicalType` attributes are ignored (the field is its
//! underlying type) and reported by [`Schema::misplaced_logical_types`].

mod de;
mod enc;
mod error;
mod resolve;
mod schema;
mod value;
mod wire;

#[cfg(test)]
mod tests;

pub use enc::EncodePlan;
pub use error::{AvroError, Result};
pub use resolve::DecodePlan;
pub use schema::Schema;
pub use value::{encode_value, json_to_value, value_to_json};
