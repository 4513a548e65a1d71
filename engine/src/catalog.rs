//! The catalog: the named topologies a command can list, describe, validate and run.
//! The `engine` command's own catalog comes from the `topologies` crate; a user's `main`
//! builds its own and hands it to [`cli::main`](crate::cli::main).

use crate::serde::AvroContext;
use crate::topology::{Topology, TopologyError};

/// What a topology's build function may read.
#[derive(Clone, Debug, Default)]
pub struct BuildContext {
    /// The schema registry, its settings and health, for Avro serdes.
    pub avro: AvroContext,
    /// The `[topologies.NAME]` table of the configuration file.
    pub options: toml::Table,
}

type BuildFn = Box<dyn Fn(&BuildContext) -> Result<Topology, TopologyError> + Send + Sync>;

/// One named topology.
pub struct CatalogEntry {
    /// Name on the command line (and usually the application id).
    pub name: String,
    /// One-line description for `engine list`.
    pub description: String,
    build: BuildFn,
}

impl CatalogEntry {
    /// Builds (and so validates) the topology.
    pub fn build(&self, ctx: &BuildContext) -> Result<Topology, TopologyError> {
        (self.build)(ctx)
    }
}

impl std::fmt::Debug for CatalogEntry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CatalogEntry")
            .field("name", &self.name)
            .finish()
    }
}

/// The list of topologies a command knows.
///
/// ```
/// use engine::Catalog;
/// use engine::serde::Serdes;
/// use engine::topology::{Topic, TopologyBuilder};
///
/// let catalog = Catalog::new().with("echo", "copies `in` to `out`", |_ctx| {
///     let b = TopologyBuilder::new("echo");
///     b.stream(&Topic::new("in", Serdes::bytes(), Serdes::bytes())).named("in")
///         .to(&Topic::new("out", Serdes::bytes(), Serdes::bytes())).named("out");
///     b.build()
/// });
/// assert!(catalog.get("echo").is_some());
/// ```
#[derive(Debug, Default)]
pub struct Catalog {
    entries: Vec<CatalogEntry>,
}

impl Catalog {
    /// An empty catalog.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a topology.
    pub fn with(
        mut self,
        name: &str,
        description: &str,
        build: impl Fn(&BuildContext) -> Result<Topology, TopologyError> + Send + Sync + 'static,
    ) -> Self {
        self.entries.push(CatalogEntry {
            name: name.to_string(),
            description: description.to_string(),
            build: Box::new(build),
        });
        self
    }

    /// Every entry, in the order added.
    pub fn entries(&self) -> &[CatalogEntry] {
        &self.entries
    }

    /// The entry with this name.
    pub fn get(&self, name: &str) -> Option<&CatalogEntry> {
        self.entries.iter().find(|e| e.name == name)
    }

    /// Names, for error messages.
    pub fn names(&self) -> Vec<&str> {
        self.entries.iter().map(|e| e.name.as_str()).collect()
    }
}
