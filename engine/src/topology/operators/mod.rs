//! The DSL's operators, one per file, each a [`Processor`](super::Processor) plus the
//! `KStream` method that attaches it.

pub(crate) mod branch;
mod filter;
mod flat_map;
mod map;
mod map_values;
mod merge;
mod peek;
mod process;
mod select_key;
mod to;

pub use branch::Branch;
