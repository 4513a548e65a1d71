//! The DSL's operators, one per file, each a [`Processor`](super::Processor) plus the
//! `KStream` method that attaches it.

mod aggregate;
pub(crate) mod branch;
mod deduplicate;
mod filter;
mod flat_map;
pub(crate) mod global_table;
mod join;
mod join_global;
mod join_grace;
mod join_streams;
mod join_tables;
mod map;
mod map_values;
mod merge;
mod peek;
mod process;
mod select_key;
mod sessionize;
mod table;
pub(crate) mod to;
mod window;

pub use aggregate::{Grouped, KGroupedStream};
pub use branch::{Branch, Split};
pub use deduplicate::FirstSeen;
pub use global_table::GlobalKTable;
pub use join_grace::Joined;
pub use join_streams::{JoinWindows, StreamJoined};
pub use sessionize::{SessionWindowedKStream, SessionWindows};
pub use table::KTable;
pub use to::Terminal;
pub use window::{
    Emit, LateRecords, TimeWindowedKStream, TimeWindows, Windowed, WindowedSerde, Windowing,
};
