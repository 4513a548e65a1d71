//! The `engine` command line, reusable from any `main`: `engine::cli::main(catalog)` gives
//! a program of your own the same `list`, `describe`, `validate`, `run` and `dev`
//! commands over your topologies.
//!
//! Exit codes: 0 success, 1 runtime failure, 2 usage or configuration error, 3 shutdown
//! incomplete.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand, ValueEnum};

mod tools;

use crate::catalog::{BuildContext, Catalog};
use crate::config::{EngineConfig, Overrides, defaults};
use crate::kafka::EmbeddedBroker;
use crate::registry::{MemoryRegistry, MockRegistries, RegistryConfig, SchemaRegistry};
use crate::runtime::{RuntimeError, SHUTDOWN_INCOMPLETE_EXIT_CODE, Shutdown, run_topologies};
use crate::serde::AvroContext;
use crate::topology::Topology;

/// Exit code for success.
pub const EXIT_OK: u8 = 0;
/// Exit code for a failure at run time (broker unreachable, a record failed under `fail`).
pub const EXIT_RUNTIME: u8 = 1;
/// Exit code for a usage or configuration error (including an invalid topology).
pub const EXIT_USAGE: u8 = 2;
/// Exit code when `engine run` could not finish its shutdown within
/// `shutdown_timeout_ms`, or a second signal cut it short: some offsets were not
/// committed, and their records are processed again after a restart.
pub const EXIT_SHUTDOWN_INCOMPLETE: u8 = SHUTDOWN_INCOMPLETE_EXIT_CODE;

#[derive(Parser, Debug)]
#[command(
    name = "engine",
    version,
    about = "Run Kafka Streams-style topologies written in Rust",
    long_about = "Run Kafka Streams-style topologies written in Rust.\n\n\
        Configuration, in increasing precedence: a TOML file (--config or ENGINE_CONFIG), \
        the environment (KAFKA_BOOTSTRAP_SERVERS, KAFKA_SCHEMA_REGISTRY_URL), and flags. \
        Any librdkafka property passes through with --kafka KEY=VALUE (prefix consumer. or \
        producer. to target one client).\n\n\
        Exit codes: 0 ok, 1 runtime failure, 2 usage or configuration error, 3 shutdown \
        incomplete (engine run: the broker did not answer within shutdown_timeout_ms, or a \
        second SIGINT/SIGTERM; uncommitted records are processed again on restart)."
)]
struct Cli {
    /// TOML configuration file ([kafka], [schema_registry], [runtime], [topologies.NAME]).
    #[arg(long, global = true, env = "ENGINE_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,
    /// Kafka bootstrap servers (host:port,...).
    #[arg(
        long,
        global = true,
        env = "KAFKA_BOOTSTRAP_SERVERS",
        value_name = "HOSTS"
    )]
    bootstrap_servers: Option<String>,
    /// Schema registry URL (http://..., https://... or mock://SCOPE).
    #[arg(
        long,
        global = true,
        env = "KAFKA_SCHEMA_REGISTRY_URL",
        value_name = "URL"
    )]
    schema_registry_url: Option<String>,
    /// A librdkafka property, KEY=VALUE; repeatable.
    #[arg(long = "kafka", global = true, value_name = "KEY=VALUE")]
    kafka: Vec<String>,
    /// Directory of RocksDB state stores.
    #[arg(long, global = true, env = "ENGINE_STATE_DIR", value_name = "DIR")]
    state_dir: Option<PathBuf>,
    /// `at_least_once` (default) or `exactly_once_v2` (Kafka Streams' EOS v2: outputs,
    /// changelogs and offsets commit in one transaction every 100 ms; real Kafka only).
    #[arg(
        long,
        global = true,
        env = "ENGINE_PROCESSING_GUARANTEE",
        value_name = "GUARANTEE"
    )]
    processing_guarantee: Option<crate::config::ProcessingGuarantee>,
    /// Log filter (tracing's EnvFilter syntax, e.g. `info,librdkafka=debug`).
    #[arg(long, global = true, env = "ENGINE_LOG", default_value = "info")]
    log: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// List the topologies: one per line, name then description.
    List,
    /// Print a topology's nodes and edges.
    Describe {
        /// Topology name (see `list`).
        name: String,
        /// Output format.
        #[arg(long, value_enum, default_value_t = Format::Text)]
        format: Format,
    },
    /// Check a topology and print every problem found (exit 2 if any).
    Validate {
        /// Topology name (see `list`).
        name: String,
    },
    /// Run one or more topologies in this process, on one shared executor. SIGINT or
    /// SIGTERM drains, commits and leaves the group within `[runtime]
    /// shutdown_timeout_ms` (exit 3 past it); a second signal exits 3 at once. Internal
    /// topics (changelogs, repartition topics) are created when missing.
    Run {
        /// Topology names (see `list`).
        #[arg(required = true)]
        names: Vec<String>,
        /// Start an in-process broker (librdkafka's mock cluster) and create the topics.
        /// For development and tests only; without it a broker must be configured.
        #[arg(long)]
        embedded: bool,
        /// Partitions of the topics --embedded or --create-topics creates.
        #[arg(long, default_value_t = defaults::EMBEDDED_PARTITIONS)]
        partitions: i32,
        /// Create the topics the topologies read and write that are missing (sources,
        /// sinks, dead-letter and global topics), with --partitions partitions. For
        /// development: in production create them yourself. Internal topics (changelogs)
        /// are always created when missing.
        #[arg(long)]
        create_topics: bool,
        /// Serve GET /health, /metrics (Prometheus), /stores/{store}[/{key}] and the
        /// topology's own routes (e.g. the ticket service's /api/v1/tickets) on this
        /// address, e.g. 127.0.0.1:8080 (bind to localhost unless you mean otherwise).
        #[arg(long, value_name = "ADDR")]
        http: Option<std::net::SocketAddr>,
        /// HOST:PORT at which other instances reach this one's --http endpoint (default:
        /// the --http address). Instances announce it on `<application>-instances`, so a
        /// query for a key another instance holds answers 421 naming that instance (a
        /// topology's own routes ask that instance instead).
        #[arg(long, value_name = "HOST:PORT", requires = "http")]
        advertised_http: Option<String>,
    },
    /// Host a local broker (librdkafka's mock cluster) for other processes until Ctrl-C.
    /// Prints KAFKA_BOOTSTRAP_SERVERS=<addr> as its first line on stdout.
    Dev {
        /// Create a topic, NAME or NAME:PARTITIONS; repeatable.
        #[arg(long = "topic", value_name = "NAME[:PARTITIONS]")]
        topics: Vec<String>,
        /// Create every topic these topologies use; repeatable.
        #[arg(long = "topology", value_name = "NAME")]
        topologies: Vec<String>,
        /// Partitions for topics given without a count.
        #[arg(long, default_value_t = defaults::EMBEDDED_PARTITIONS)]
        partitions: i32,
        /// Number of mock brokers.
        #[arg(long, default_value_t = 1)]
        brokers: i32,
        /// Port of the schema registry (0 picks a free one).
        #[arg(long, default_value_t = 0)]
        registry_port: u16,
    },
    /// Register, fetch or check schemas in the schema registry.
    #[command(subcommand)]
    Schema(tools::SchemaCommand),
    /// Produce JSON lines from stdin to a topic, encoded with the topic's Avro schema
    /// (like `kcat -P` with Avro); `--format json` writes them as JSON.
    Produce(tools::ProduceArgs),
    /// Print records of a topic as JSON lines with partition, offset, format and schema
    /// id, decoding Avro through the registry (like `kcat -C -s avro`).
    Consume(tools::ConsumeArgs),
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Format {
    Text,
    Mermaid,
}

/// A subcommand a program adds to the command line next to the built-in ones (the
/// `engine` command adds `demo` this way). It sees the global flags through the loaded
/// configuration.
pub struct Extension {
    /// Its name, help and arguments.
    pub command: clap::Command,
    /// Log filter when `--log` is not given (a command with its own live output may want
    /// `warn`).
    pub default_log: &'static str,
    /// Runs it with its arguments, the configuration and stdout; returns the exit code.
    #[allow(clippy::type_complexity)]
    pub run: Box<dyn Fn(&clap::ArgMatches, &EngineConfig, &mut dyn Write) -> u8>,
}

impl std::fmt::Debug for Extension {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Extension")
            .field("command", &self.command.get_name())
            .finish()
    }
}

/// Like [`main`], with `extensions` as more subcommands.
pub fn main_with(catalog: Catalog, extensions: Vec<Extension>) -> ExitCode {
    let code = run_with(
        &catalog,
        &extensions,
        std::env::args_os(),
        &mut std::io::stdout(),
        &mut std::io::stderr(),
    );
    ExitCode::from(code)
}

/// Runs the command line over `catalog` with the process's arguments; for `main`.
///
/// ```no_run
/// fn main() -> std::process::ExitCode {
///     engine::cli::main(engine::Catalog::new())
/// }
/// ```
pub fn main(catalog: Catalog) -> ExitCode {
    let code = run(
        &catalog,
        std::env::args_os(),
        &mut std::io::stdout(),
        &mut std::io::stderr(),
    );
    ExitCode::from(code)
}

/// Runs the command line with explicit arguments and output streams; returns the exit
/// code. Logs go to stderr through `tracing`.
pub fn run<I, T>(catalog: &Catalog, args: I, out: &mut dyn Write, err: &mut dyn Write) -> u8
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    run_with(catalog, &[], args, out, err)
}

/// [`run`] with `extensions` as more subcommands.
pub fn run_with<I, T>(
    catalog: &Catalog,
    extensions: &[Extension],
    args: I,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> u8
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    let mut command = Cli::command();
    for extension in extensions {
        command = command.subcommand(extension.command.clone());
    }
    let parsed = command.try_get_matches_from(args).and_then(|matches| {
        if let Some((name, sub)) = matches.subcommand()
            && let Some(extension) = extensions.iter().find(|e| e.command.get_name() == name)
        {
            return Ok(Err((extension, sub.clone(), matches.clone())));
        }
        Cli::from_arg_matches(&matches).map(Ok)
    });
    let cli = match parsed {
        Ok(Ok(cli)) => cli,
        Ok(Err((extension, sub, matches))) => {
            let explicit =
                matches.value_source("log") != Some(clap::parser::ValueSource::DefaultValue);
            let log = matches
                .get_one::<String>("log")
                .filter(|_| explicit)
                .cloned()
                .unwrap_or_else(|| extension.default_log.into());
            init_logging(&log);
            let overrides = Overrides {
                config_file: matches.get_one::<PathBuf>("config").cloned(),
                bootstrap_servers: matches.get_one::<String>("bootstrap_servers").cloned(),
                schema_registry_url: matches.get_one::<String>("schema_registry_url").cloned(),
                kafka: matches
                    .get_many::<String>("kafka")
                    .map(|v| v.cloned().collect())
                    .unwrap_or_default(),
                state_dir: matches.get_one::<PathBuf>("state_dir").cloned(),
                processing_guarantee: matches
                    .get_one::<crate::config::ProcessingGuarantee>("processing_guarantee")
                    .copied(),
            };
            return match EngineConfig::load(&overrides) {
                Ok(config) => (extension.run)(&sub, &config, out),
                Err(e) => {
                    let _ = writeln!(err, "error: {e}");
                    EXIT_USAGE
                }
            };
        }
        Err(e) => {
            let code = if e.use_stderr() { EXIT_USAGE } else { EXIT_OK };
            let text = e.render().ansi().to_string();
            let _ = if e.use_stderr() {
                write!(err, "{text}")
            } else {
                write!(out, "{text}")
            };
            return code;
        }
    };
    init_logging(&cli.log);
    let overrides = Overrides {
        config_file: cli.config.clone(),
        bootstrap_servers: cli.bootstrap_servers.clone(),
        schema_registry_url: cli.schema_registry_url.clone(),
        kafka: cli.kafka.clone(),
        state_dir: cli.state_dir.clone(),
        processing_guarantee: cli.processing_guarantee,
    };
    match execute(catalog, cli.command, &overrides, out) {
        Ok(()) => EXIT_OK,
        Err(Failure { code, message }) => {
            let _ = writeln!(err, "error: {message}");
            code
        }
    }
}

fn init_logging(filter: &str) {
    // apache-avro (used to parse schemas) warns again, per schema built, about what the
    // engine reports once itself (logical types it ignores): quiet unless asked for.
    let filter = if filter.contains("apache_avro") {
        filter.to_string()
    } else {
        format!("{filter},apache_avro=error")
    };
    let filter = tracing_subscriber::EnvFilter::try_new(&filter)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,apache_avro=error"));
    use std::io::IsTerminal;
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .with_target(true)
        .try_init();
}

struct Failure {
    code: u8,
    message: String,
}

fn usage(message: impl Into<String>) -> Failure {
    Failure {
        code: EXIT_USAGE,
        message: message.into(),
    }
}

fn runtime(message: impl Into<String>) -> Failure {
    Failure {
        code: EXIT_RUNTIME,
        message: message.into(),
    }
}

/// The registry the configuration names: `mock://SCOPE` resolves in `mocks`; with no URL
/// and `embedded_scope`, an in-process registry of that scope.
fn avro_context(
    config: &EngineConfig,
    mocks: &MockRegistries,
    embedded_scope: Option<&str>,
) -> Result<AvroContext, Failure> {
    let url = config
        .schema_registry_url
        .clone()
        .or_else(|| embedded_scope.map(|s| format!("mock://{s}")));
    let registry = url
        .map(|u| SchemaRegistry::connect(RegistryConfig::new(u), mocks))
        .transpose()
        .map_err(|e| usage(format!("schema registry: {e}")))?;
    Ok(AvroContext {
        registry,
        settings: config.avro.clone(),
        health: Default::default(),
        notices: Default::default(),
    })
}

fn build_context(config: &EngineConfig, avro: &AvroContext, name: &str) -> BuildContext {
    BuildContext {
        avro: avro.clone(),
        options: config
            .topology_options
            .get(name)
            .cloned()
            .unwrap_or_default(),
    }
}

/// Builds the named topologies, reporting unknown names and every problem of each.
fn build_all(
    catalog: &Catalog,
    names: &[String],
    config: &EngineConfig,
    avro: &AvroContext,
) -> Result<Vec<Topology>, Failure> {
    let mut problems = Vec::new();
    let mut topologies = Vec::new();
    for name in names {
        match catalog.get(name) {
            None => problems.push(format!(
                "no topology named `{name}`; known: {}",
                catalog.names().join(", ")
            )),
            Some(entry) => match entry.build(&build_context(config, avro, name)) {
                Ok(t) => topologies.push(t),
                Err(e) => problems.push(e.to_string()),
            },
        }
    }
    if problems.is_empty() {
        Ok(topologies)
    } else {
        Err(usage(problems.join("\n")))
    }
}

fn execute(
    catalog: &Catalog,
    command: Command,
    overrides: &Overrides,
    out: &mut dyn Write,
) -> Result<(), Failure> {
    let load = || EngineConfig::load(overrides).map_err(|e| usage(e.to_string()));
    let mocks = MockRegistries::new();
    match command {
        Command::List => {
            let width = catalog.names().iter().map(|n| n.len()).max().unwrap_or(0);
            for entry in catalog.entries() {
                let _ = writeln!(out, "{:<width$}  {}", entry.name, entry.description);
            }
            Ok(())
        }
        Command::Describe { name, format } => {
            let config = load()?;
            let avro = avro_context(&config, &mocks, Some("describe"))?;
            let topology = build_all(catalog, &[name], &config, &avro)?.remove(0);
            let text = match format {
                Format::Text => topology.describe(),
                Format::Mermaid => topology.describe_mermaid(),
            };
            let _ = write!(out, "{text}");
            Ok(())
        }
        Command::Validate { name } => {
            let config = load()?;
            let avro = avro_context(&config, &mocks, Some("validate"))?;
            let topology = build_all(catalog, &[name], &config, &avro)?.remove(0);
            let _ = writeln!(
                out,
                "topology `{}` is valid: reads {}, writes {}",
                topology.application_id(),
                topology.source_topics().join(", "),
                topology.sink_topics().join(", ")
            );
            Ok(())
        }
        Command::Run {
            names,
            embedded,
            partitions,
            create_topics,
            http,
            advertised_http,
        } => {
            if let Some(advertised) = &advertised_http {
                crate::config::check_advertised_http(advertised)
                    .map_err(|e| usage(format!("--advertised-http: {e}")))?;
            }
            let config = load()?;
            let avro = avro_context(&config, &mocks, embedded.then_some("embedded"))?;
            let topologies = build_all(catalog, &names, &config, &avro)?;
            if partitions < 1 {
                return Err(usage("--partitions must be at least 1"));
            }
            let broker = if embedded {
                if let Some(configured) = &config.bootstrap_servers {
                    tracing::warn!(%configured, "--embedded given: the configured broker is not used");
                }
                let broker = EmbeddedBroker::start(1)
                    .map_err(|e| runtime(format!("cannot start the embedded broker: {e}")))?;
                let instance_topics = topologies
                    .iter()
                    .map(|t| (crate::runtime::instances_topic(t.application_id()), 1));
                for (topic, partitions) in topologies
                    .iter()
                    .flat_map(Topology::topics)
                    .map(|t| (t, partitions))
                    .chain(instance_topics)
                {
                    broker.create_topic(&topic, partitions).map_err(|e| {
                        runtime(format!(
                            "cannot create topic `{topic}` on the embedded broker: {e}"
                        ))
                    })?;
                }
                tracing::info!(bootstrap_servers = %broker.bootstrap_servers(), "embedded broker (librdkafka mock cluster) started; for development only");
                Some(broker)
            } else {
                None
            };
            let bootstrap = match (&broker, &config.bootstrap_servers) {
                (Some(b), _) => b.bootstrap_servers(),
                (None, Some(b)) => b.clone(),
                (None, None) => {
                    return Err(usage(
                        "no Kafka broker configured: set KAFKA_BOOTSTRAP_SERVERS, pass \
                         --bootstrap-servers HOST:PORT, or set [kafka] bootstrap_servers in the \
                         config file; for a local in-process broker pass --embedded (the engine \
                         never falls back to an in-memory broker on its own)",
                    ));
                }
            };
            let mut settings = config.run_settings(&bootstrap);
            settings.create_topics = create_topics.then_some(partitions);
            if broker.is_some() {
                // The mock cluster waits session.timeout.ms - 1 s before a member may join
                // a group another just left; a short timeout keeps restarts quick.
                settings
                    .client
                    .properties
                    .entry("consumer.session.timeout.ms".into())
                    .or_insert_with(|| "6000".into());
            }
            let executor = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .map_err(|e| runtime(format!("cannot start the executor: {e}")))?;
            if let Some(addr) = http {
                let ops = Arc::new(crate::ops::OpsState::default());
                ops.set_registry(avro.health.clone());
                let (bound, server) = {
                    let _guard = executor.enter();
                    crate::ops::serve(ops.clone(), &topologies, &settings.client, addr)
                        .map_err(|e| usage(format!("--http {addr}: cannot listen: {e}")))?
                };
                executor.spawn(async move {
                    if let Err(error) = server.await {
                        tracing::error!(%error, "operations endpoint stopped");
                    }
                });
                // Flag and file values are checked above and at load; the bound address
                // is a socket address.
                let advertised = advertised_http
                    .or(config.advertised_http.clone())
                    .unwrap_or_else(|| bound.to_string());
                if bound.ip().is_unspecified() && advertised == bound.to_string() {
                    tracing::warn!(%bound, "--http listens on every interface but other instances are told {advertised}; set --advertised-http to an address they can reach");
                }
                tracing::info!(addr = %bound, %advertised, "operations endpoint: /health, /metrics, /stores/{{store}}/{{key}} and the topologies' own routes");
                settings.ops = Some(ops);
                settings.advertised_http = Some(advertised);
            }
            let result = executor.block_on(async move {
                run_topologies(topologies, settings, Shutdown::on_signals()).await
            });
            // A client close the broker never answered is left on its thread (bounded by
            // shutdown_timeout_ms already): don't wait for it again here.
            executor.shutdown_timeout(Duration::from_millis(500));
            drop(broker);
            result.map_err(|e| match e {
                RuntimeError::ShutdownIncomplete { .. } => Failure {
                    code: EXIT_SHUTDOWN_INCOMPLETE,
                    message: e.to_string(),
                },
                RuntimeError::Config(_) => usage(e.to_string()),
                e => runtime(e.to_string()),
            })
        }
        Command::Dev {
            topics,
            topologies,
            partitions,
            brokers,
            registry_port,
        } => {
            let config = load()?;
            let mut wanted: Vec<(String, i32)> = Vec::new();
            for spec in &topics {
                wanted.push(parse_topic_spec(spec, partitions)?);
            }
            let registry = Arc::new(MemoryRegistry::new());
            let avro = AvroContext {
                registry: Some(SchemaRegistry::memory(registry.clone())),
                settings: config.avro.clone(),
                health: Default::default(),
                notices: Default::default(),
            };
            for topology in build_all(catalog, &topologies, &config, &avro)? {
                wanted.extend(topology.topics().into_iter().map(|t| (t, partitions)));
                // Where instances with --http announce their partitions: one partition.
                wanted.push((
                    crate::runtime::instances_topic(topology.application_id()),
                    1,
                ));
            }
            let broker = EmbeddedBroker::start(brokers)
                .map_err(|e| runtime(format!("cannot start the embedded broker: {e}")))?;
            for (topic, n) in &wanted {
                broker
                    .create_topic(topic, *n)
                    .map_err(|e| runtime(format!("cannot create topic `{topic}`: {e}")))?;
            }
            let executor = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
                .map_err(|e| runtime(format!("cannot start the executor: {e}")))?;
            let registry_addr = std::net::SocketAddr::from(([127, 0, 0, 1], registry_port));
            let (registry_addr, server) = crate::registry::server::serve(registry, registry_addr)
                .map_err(|e| {
                runtime(format!(
                    "cannot serve the schema registry on {registry_addr}: {e}"
                ))
            })?;
            let _ = writeln!(
                out,
                "KAFKA_BOOTSTRAP_SERVERS={}",
                broker.bootstrap_servers()
            );
            let _ = writeln!(out, "KAFKA_SCHEMA_REGISTRY_URL=http://{registry_addr}");
            let _ = out.flush();
            tracing::info!(bootstrap_servers = %broker.bootstrap_servers(), schema_registry = %registry_addr, topics = ?wanted, "development broker (librdkafka mock cluster: no admin API, no compaction, a few MB per partition) and schema registry up; Ctrl-C to stop");
            let served = executor.block_on(async {
                let mut shutdown = Shutdown::on_signals();
                tokio::select! {
                    _ = shutdown.wait() => Ok(()),
                    result = server => result,
                }
            });
            served.map_err(|e| runtime(format!("schema registry stopped: {e}")))?;
            drop(broker);
            Ok(())
        }
        Command::Schema(command) => {
            let config = load()?;
            let avro = avro_context(&config, &mocks, None)?;
            tools::schema(command, &avro, out)
        }
        Command::Produce(args) => {
            let config = load()?;
            let avro = avro_context(&config, &mocks, None)?;
            tools::produce(args, &config, &avro, out)
        }
        Command::Consume(args) => {
            let config = load()?;
            let avro = avro_context(&config, &mocks, None)?;
            tools::consume(args, &config, &avro, out)
        }
    }
}

fn parse_topic_spec(spec: &str, default_partitions: i32) -> Result<(String, i32), Failure> {
    let bad = || {
        usage(format!(
            "--topic `{spec}` must be NAME or NAME:PARTITIONS with PARTITIONS >= 1"
        ))
    };
    match spec.rsplit_once(':') {
        None if !spec.is_empty() => Ok((spec.to_string(), default_partitions)),
        Some((name, n)) if !name.is_empty() => match n.parse::<i32>() {
            Ok(n) if n >= 1 => Ok((name.to_string(), n)),
            _ => Err(bad()),
        },
        _ => Err(bad()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topic_specs_parse() {
        assert_eq!(parse_topic_spec("a", 4).ok().map(|t| t.1), Some(4));
        assert_eq!(parse_topic_spec("a:16", 4).ok(), Some(("a".into(), 16)));
        assert!(parse_topic_spec("a:0", 4).is_err());
        assert!(parse_topic_spec(":3", 4).is_err());
    }
}
