//! Configuration: an optional TOML file, the environment variables the services use
//! today (`KAFKA_BOOTSTRAP_SERVERS`, `KAFKA_SCHEMA_REGISTRY_URL`), and command-line flags,
//! in increasing precedence. Unknown keys are errors; every problem is reported at once
//! with what to do about it. Defaults live in [`defaults`].

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::kafka::ClientSettings;
use crate::runtime::RunSettings;
use crate::serde::{AvroSettings, Fallback, SubjectNameStrategy};

/// The one place defaults are set.
pub mod defaults {
    /// Offsets are committed this often (ms) under at-least-once.
    pub const COMMIT_INTERVAL_MS: u64 = 1_000;
    /// Transactions are committed this often (ms) under exactly-once with `optimize_for
    /// = "throughput"` (Kafka Streams' `commit.interval.ms` default under EOS).
    pub const EOS_COMMIT_INTERVAL_MS: u64 = 100;
    /// Transactions are committed this often (ms) under exactly-once with `optimize_for
    /// = "latency"` (the default): a committed reader sees an output only once its
    /// transaction commits, so the interval is most of the latency under EOS.
    pub const EOS_LATENCY_COMMIT_INTERVAL_MS: u64 = 25;
    /// `transaction.timeout.ms` of the transactional producer under exactly-once (Kafka
    /// Streams sets 10 s: a zombie's open transaction blocks `read_committed` readers of
    /// its partitions until the broker aborts it).
    pub const EOS_TRANSACTION_TIMEOUT_MS: u64 = 10_000;
    /// Input records with unacknowledged outputs before partitions pause.
    pub const MAX_IN_FLIGHT: usize = 10_000;
    /// How long to wait for the broker at start-up (ms).
    pub const STARTUP_TIMEOUT_MS: u64 = 10_000;
    /// How long to wait for acknowledgements at shutdown (ms).
    pub const SHUTDOWN_TIMEOUT_MS: u64 = 30_000;
    /// RocksDB block cache shared by every store of the process (bytes).
    pub const BLOCK_CACHE_BYTES: usize = 32 << 20;
    /// RocksDB write buffer per store (bytes).
    pub const WRITE_BUFFER_BYTES: usize = 8 << 20;
    /// Record cache of the aggregations, shared by the tasks of a topology instance
    /// (bytes; Kafka Streams' `statestore.cache.max.bytes` default).
    pub const CACHE_MAX_BYTES: usize = 10 << 20;
    /// Partitions of the topics `--embedded` and `--create-topics` create.
    pub const EMBEDDED_PARTITIONS: i32 = 4;
    /// Replication factor of the topics the engine creates (-1: the broker's
    /// `default.replication.factor`, as Kafka Streams' `replication.factor` default).
    pub const REPLICATION_FACTOR: i32 = -1;
    /// How often committed records of repartition topics are deleted (ms; Kafka
    /// Streams' `repartition.purge.interval.ms`).
    pub const REPARTITION_PURGE_INTERVAL_MS: u64 = 30_000;
}

/// The configuration file, as written.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// `[kafka]`
    #[serde(default)]
    pub kafka: KafkaSection,
    /// `[schema_registry]`
    #[serde(default)]
    pub schema_registry: RegistrySection,
    /// `[runtime]`
    #[serde(default)]
    pub runtime: RuntimeSection,
    /// `[topologies.NAME]`: options handed to each topology's build function.
    #[serde(default)]
    pub topologies: BTreeMap<String, toml::Table>,
}

/// `[kafka]` section.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct KafkaSection {
    /// `bootstrap.servers`.
    pub bootstrap_servers: Option<String>,
    /// librdkafka properties passed through (`consumer.`/`producer.` prefixes target one
    /// client).
    #[serde(default)]
    pub properties: BTreeMap<String, String>,
}

/// `[schema_registry]` section.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RegistrySection {
    /// Registry URL (`http(s)://[user:password@]host:port` or `mock://scope`).
    pub url: Option<String>,
    /// `json` (default) or `fail`: what serializers do when the registry does not answer
    /// at start-up.
    pub fallback: Option<Fallback>,
    /// Register schemas on first use (default true).
    pub auto_register: Option<bool>,
    /// Write with the subject's latest schema (default false).
    pub use_latest_version: Option<bool>,
    /// `topic_name` (default), `record_name` or `topic_record_name`.
    pub subject_name_strategy: Option<SubjectNameStrategy>,
}

/// `[runtime]` section.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RuntimeSection {
    /// Commit interval in ms.
    pub commit_interval_ms: Option<u64>,
    /// In-flight bound.
    pub max_in_flight: Option<usize>,
    /// Start-up timeout in ms.
    pub startup_timeout_ms: Option<u64>,
    /// Shutdown timeout in ms.
    pub shutdown_timeout_ms: Option<u64>,
    /// Directory of RocksDB stores (default: the system temporary directory's
    /// `engine-state`).
    pub state_dir: Option<PathBuf>,
    /// RocksDB block cache shared by all stores, bytes.
    pub block_cache_bytes: Option<usize>,
    /// RocksDB write buffer per store, bytes.
    pub write_buffer_bytes: Option<usize>,
    /// Record cache of the aggregations per topology instance, bytes (0: off).
    pub cache_max_bytes: Option<usize>,
    /// `host:port` other instances use to reach this one's operations endpoint (default:
    /// the `--http` address); also `--advertised-http`.
    pub advertised_http: Option<String>,
    /// Replication factor of the internal topics the engine creates (-1: the broker's
    /// default).
    pub replication_factor: Option<i32>,
    /// Extra configurations of every internal topic the engine creates.
    #[serde(default)]
    pub internal_topic_configs: BTreeMap<String, String>,
    /// How often committed records of repartition topics are deleted, ms.
    pub repartition_purge_interval_ms: Option<u64>,
    /// `at_least_once` (default) or `exactly_once_v2`; also `--processing-guarantee`.
    pub processing_guarantee: Option<ProcessingGuarantee>,
    /// `latency` (default) or `throughput`: what the client defaults favour.
    pub optimize_for: Option<OptimizeFor>,
}

/// What the engine's client defaults favour: one named setting for the trade-off
/// between how soon an output leaves and how many records a request carries.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum OptimizeFor {
    /// Outputs wait at most 5 ms to share a request (`linger.ms` 5, the Java
    /// producer's default since Kafka 4.0). Chosen from the benchmark's latency runs
    /// (`ticket-pipeline`, at-least-once, 10,000 records/s, two runs each): p50 5 ms and
    /// p99 12 to 22 ms, where `linger.ms` 0 gave p50 3.4 ms but p99 33 to 67 ms (more,
    /// smaller requests load the broker) and 100 gave p50 54 ms.
    ///
    /// Under exactly-once, transactions commit every 25 ms: in a tuning run (real
    /// broker, 1,000 and 10,000 records/s) p99 was 36 and 44 ms against 109 and 110 ms
    /// with 100 ms, for four times as many transactions (and markers).
    #[default]
    Latency,
    /// Outputs wait up to 100 ms to fill larger requests (`linger.ms` 100, Kafka
    /// Streams' producer default): fewer, larger requests for a busy broker; under
    /// exactly-once, transactions commit every 100 ms (Kafka Streams' default).
    Throughput,
}

impl OptimizeFor {
    /// The producer's `linger.ms` under this setting.
    pub fn linger_ms(self) -> &'static str {
        match self {
            OptimizeFor::Latency => "5",
            OptimizeFor::Throughput => "100",
        }
    }

    /// The interval between transactions under exactly-once, unless one is configured.
    pub fn eos_commit_interval_ms(self) -> u64 {
        match self {
            OptimizeFor::Latency => defaults::EOS_LATENCY_COMMIT_INTERVAL_MS,
            OptimizeFor::Throughput => defaults::EOS_COMMIT_INTERVAL_MS,
        }
    }
}

/// What a topology guarantees about its outputs, as Kafka Streams'
/// `processing.guarantee`.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
#[value(rename_all = "snake_case")]
pub enum ProcessingGuarantee {
    /// Offsets commit after the outputs they caused are acknowledged: after a crash the
    /// records since the last commit are processed again, and their outputs may appear
    /// twice.
    #[default]
    AtLeastOnce,
    /// KIP-447: one transactional producer per instance; the outputs, changelog records
    /// and consumed offsets of a commit interval commit together or not at all, and
    /// `read_committed` readers see each input's effects once.
    #[serde(rename = "exactly_once_v2")]
    #[value(name = "exactly_once_v2")]
    ExactlyOnceV2,
}

impl ProcessingGuarantee {
    /// Whether this is exactly-once.
    pub fn exactly_once(self) -> bool {
        self == ProcessingGuarantee::ExactlyOnceV2
    }

    /// The name used in configuration.
    pub fn name(self) -> &'static str {
        match self {
            ProcessingGuarantee::AtLeastOnce => "at_least_once",
            ProcessingGuarantee::ExactlyOnceV2 => "exactly_once_v2",
        }
    }
}

/// Values from flags and the environment (flags win; clap merges the two).
#[derive(Clone, Debug, Default)]
pub struct Overrides {
    /// `--config FILE`.
    pub config_file: Option<PathBuf>,
    /// `--bootstrap-servers` / `KAFKA_BOOTSTRAP_SERVERS`.
    pub bootstrap_servers: Option<String>,
    /// `--schema-registry-url` / `KAFKA_SCHEMA_REGISTRY_URL`.
    pub schema_registry_url: Option<String>,
    /// `--kafka key=value`, repeated.
    pub kafka: Vec<String>,
    /// `--state-dir`.
    pub state_dir: Option<PathBuf>,
    /// `--processing-guarantee` / `ENGINE_PROCESSING_GUARANTEE`.
    pub processing_guarantee: Option<ProcessingGuarantee>,
}

/// A configuration problem, with how to fix it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not valid TOML for the engine.
    #[error("config file {path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The parser's message (names the unknown key or bad value).
        message: String,
    },
    /// Several problems at once.
    #[error("invalid configuration:\n{}", .0.iter().map(|p| format!("  - {p}")).collect::<Vec<_>>().join("\n"))]
    Invalid(Vec<String>),
}

/// The resolved configuration.
#[derive(Clone, Debug, PartialEq)]
pub struct EngineConfig {
    /// Broker address, if one is configured.
    pub bootstrap_servers: Option<String>,
    /// Schema registry URL, if configured.
    pub schema_registry_url: Option<String>,
    /// librdkafka pass-through properties.
    pub kafka_properties: BTreeMap<String, String>,
    /// Commit interval.
    pub commit_interval: Duration,
    /// In-flight bound.
    pub max_in_flight: usize,
    /// Start-up timeout.
    pub startup_timeout: Duration,
    /// Shutdown timeout.
    pub shutdown_timeout: Duration,
    /// Per-topology options from the file.
    pub topology_options: BTreeMap<String, toml::Table>,
    /// Avro serde settings.
    pub avro: AvroSettings,
    /// Directory of RocksDB stores.
    pub state_dir: PathBuf,
    /// RocksDB block cache, bytes.
    pub block_cache_bytes: usize,
    /// RocksDB write buffer per store, bytes.
    pub write_buffer_bytes: usize,
    /// Record cache of the aggregations per topology instance, bytes.
    pub cache_max_bytes: usize,
    /// Address other instances reach this one's operations endpoint at, if configured.
    pub advertised_http: Option<String>,
    /// Replication factor of the internal topics the engine creates.
    pub replication_factor: i32,
    /// Extra configurations of every internal topic the engine creates.
    pub internal_topic_configs: BTreeMap<String, String>,
    /// How often committed records of repartition topics are deleted.
    pub repartition_purge_interval: Duration,
    /// At-least-once or exactly-once.
    pub processing_guarantee: ProcessingGuarantee,
    /// What the client defaults favour.
    pub optimize_for: OptimizeFor,
}

impl EngineConfig {
    /// Merges file, environment and flags, validating everything.
    pub fn load(overrides: &Overrides) -> Result<EngineConfig, ConfigError> {
        let file = match &overrides.config_file {
            Some(path) => Self::read_file(path)?,
            None => FileConfig::default(),
        };
        Self::resolve(file, overrides)
    }

    /// Parses a configuration file.
    pub fn read_file(path: &Path) -> Result<FileConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        toml::from_str(&text).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            message: e.to_string(),
        })
    }

    /// Applies overrides to a parsed file and validates the result.
    pub fn resolve(file: FileConfig, overrides: &Overrides) -> Result<EngineConfig, ConfigError> {
        let mut problems = Vec::new();
        let mut properties = file.kafka.properties;
        for entry in &overrides.kafka {
            match entry.split_once('=') {
                Some((k, v)) if !k.trim().is_empty() => {
                    properties.insert(k.trim().to_string(), v.to_string());
                }
                _ => problems.push(format!(
                    "--kafka `{entry}` is not KEY=VALUE (for example --kafka linger.ms=10)"
                )),
            }
        }
        let optimize_for = file.runtime.optimize_for.unwrap_or_default();
        // A linger.ms the user set wins over the named setting.
        if !properties.contains_key("linger.ms") && !properties.contains_key("producer.linger.ms") {
            properties.insert("producer.linger.ms".into(), optimize_for.linger_ms().into());
        }
        let non_empty = |s: Option<String>| s.filter(|s| !s.trim().is_empty());
        let guarantee = overrides
            .processing_guarantee
            .or(file.runtime.processing_guarantee)
            .unwrap_or_default();
        let config = EngineConfig {
            processing_guarantee: guarantee,
            optimize_for,
            bootstrap_servers: non_empty(overrides.bootstrap_servers.clone())
                .or(non_empty(file.kafka.bootstrap_servers)),
            schema_registry_url: non_empty(overrides.schema_registry_url.clone())
                .or(non_empty(file.schema_registry.url.clone())),
            kafka_properties: properties,
            commit_interval: Duration::from_millis(file.runtime.commit_interval_ms.unwrap_or(
                if guarantee.exactly_once() {
                    optimize_for.eos_commit_interval_ms()
                } else {
                    defaults::COMMIT_INTERVAL_MS
                },
            )),
            max_in_flight: file
                .runtime
                .max_in_flight
                .unwrap_or(defaults::MAX_IN_FLIGHT),
            startup_timeout: Duration::from_millis(
                file.runtime
                    .startup_timeout_ms
                    .unwrap_or(defaults::STARTUP_TIMEOUT_MS),
            ),
            shutdown_timeout: Duration::from_millis(
                file.runtime
                    .shutdown_timeout_ms
                    .unwrap_or(defaults::SHUTDOWN_TIMEOUT_MS),
            ),
            topology_options: file.topologies,
            state_dir: overrides
                .state_dir
                .clone()
                .or(file.runtime.state_dir.clone())
                .unwrap_or_else(|| std::env::temp_dir().join("engine-state")),
            block_cache_bytes: file
                .runtime
                .block_cache_bytes
                .unwrap_or(defaults::BLOCK_CACHE_BYTES),
            write_buffer_bytes: file
                .runtime
                .write_buffer_bytes
                .unwrap_or(defaults::WRITE_BUFFER_BYTES),
            cache_max_bytes: file
                .runtime
                .cache_max_bytes
                .unwrap_or(defaults::CACHE_MAX_BYTES),
            advertised_http: non_empty(file.runtime.advertised_http.clone()),
            replication_factor: file
                .runtime
                .replication_factor
                .unwrap_or(defaults::REPLICATION_FACTOR),
            internal_topic_configs: file.runtime.internal_topic_configs.clone(),
            repartition_purge_interval: Duration::from_millis(
                file.runtime
                    .repartition_purge_interval_ms
                    .unwrap_or(defaults::REPARTITION_PURGE_INTERVAL_MS),
            ),
            avro: {
                let d = AvroSettings::default();
                let r = &file.schema_registry;
                AvroSettings {
                    subject_name_strategy: r
                        .subject_name_strategy
                        .unwrap_or(d.subject_name_strategy),
                    auto_register: r.auto_register.unwrap_or(d.auto_register),
                    use_latest_version: r.use_latest_version.unwrap_or(d.use_latest_version),
                    fallback: r.fallback.unwrap_or(d.fallback),
                }
            },
        };
        if config.commit_interval.is_zero() {
            problems.push("runtime.commit_interval_ms must be at least 1".into());
        }
        if config.max_in_flight == 0 {
            problems.push("runtime.max_in_flight must be at least 1".into());
        }
        if config.write_buffer_bytes < (64 << 10) {
            problems.push("runtime.write_buffer_bytes must be at least 65536".into());
        }
        if config.replication_factor == 0 || config.replication_factor < -1 {
            problems.push(format!(
                "runtime.replication_factor = {} must be at least 1, or -1 for the broker's default",
                config.replication_factor
            ));
        }
        if config.internal_topic_configs.contains_key("cleanup.policy") {
            problems.push("runtime.internal_topic_configs: cleanup.policy is set by the engine (changelogs are compacted); remove it".into());
        }
        if config.startup_timeout.is_zero() {
            problems.push("runtime.startup_timeout_ms must be at least 1".into());
        }
        if let Some(url) = &config.schema_registry_url
            && !(url.starts_with("http://")
                || url.starts_with("https://")
                || url.starts_with("mock://"))
        {
            problems.push(format!(
                "schema registry URL `{url}` must start with http://, https:// or mock://"
            ));
        }
        let client = ClientSettings {
            bootstrap_servers: config.bootstrap_servers.clone().unwrap_or_default(),
            properties: config.kafka_properties.clone(),
        };
        problems.extend(client.validate().into_iter().map(|e| e.to_string()));
        if guarantee.exactly_once() {
            problems.extend(client.contradictions_of_exactly_once());
        }
        if let Some(problem) = config
            .advertised_http
            .as_deref()
            .and_then(|a| check_advertised_http(a).err())
        {
            problems.push(format!("runtime.advertised_http: {problem}"));
        }
        if problems.is_empty() {
            Ok(config)
        } else {
            Err(ConfigError::Invalid(problems))
        }
    }

    /// Runtime settings for a broker at `bootstrap_servers`.
    pub fn run_settings(&self, bootstrap_servers: &str) -> RunSettings {
        let mut settings = RunSettings::new(bootstrap_servers);
        settings.client.properties = self.kafka_properties.clone();
        settings.commit_interval = self.commit_interval;
        settings.max_in_flight = self.max_in_flight;
        settings.startup_timeout = self.startup_timeout;
        settings.shutdown_timeout = self.shutdown_timeout;
        settings.cache_max_bytes = self.cache_max_bytes;
        settings.replication_factor = self.replication_factor;
        settings.internal_topic_configs = self.internal_topic_configs.clone();
        settings.repartition_purge_interval = self.repartition_purge_interval;
        settings.processing_guarantee = self.processing_guarantee;
        settings.state = crate::state::RocksSettings::new(
            &self.state_dir,
            self.block_cache_bytes,
            self.write_buffer_bytes,
        );
        settings
    }
}

/// Checks an advertised address is `host:port`, as other instances will put it in URLs.
pub fn check_advertised_http(address: &str) -> Result<(), String> {
    match address.rsplit_once(':') {
        Some((host, port))
            if !host.is_empty()
                && !host.contains('/')
                && port.parse::<u16>().is_ok_and(|p| p > 0) =>
        {
            Ok(())
        }
        _ => Err(format!(
            "`{address}` is not HOST:PORT (for example engine-0.engine:8080; no scheme or path)"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn advertised_http_must_be_host_and_port() {
        assert!(check_advertised_http("engine-0.engine:8080").is_ok());
        assert!(check_advertised_http("[::1]:8080").is_ok());
        for bad in [
            "engine-0",
            "http://engine-0:8080",
            ":8080",
            "host:0",
            "host:http",
        ] {
            assert!(check_advertised_http(bad).is_err(), "{bad}");
        }
        let file: FileConfig = toml::from_str("[runtime]\nadvertised_http = \"no-port\"").unwrap();
        let problem = EngineConfig::resolve(file, &Overrides::default())
            .unwrap_err()
            .to_string();
        assert!(problem.contains("advertised_http"), "{problem}");
    }

    #[test]
    fn flags_override_the_file() {
        let file: FileConfig = toml::from_str(
            "[kafka]\nbootstrap_servers = \"file:9092\"\n[kafka.properties]\n\"linger.ms\" = \"7\"\n[runtime]\nmax_in_flight = 5",
        )
        .unwrap();
        let overrides = Overrides {
            bootstrap_servers: Some("flag:9092".into()),
            kafka: vec!["linger.ms=9".into()],
            ..Default::default()
        };
        let c = EngineConfig::resolve(file, &overrides).unwrap();
        assert_eq!(c.bootstrap_servers.as_deref(), Some("flag:9092"));
        assert_eq!(c.kafka_properties["linger.ms"], "9");
        assert_eq!(c.max_in_flight, 5);
        assert_eq!(
            c.commit_interval,
            Duration::from_millis(defaults::COMMIT_INTERVAL_MS)
        );
    }

    #[test]
    fn optimize_for_names_the_linger_and_a_linger_set_by_hand_wins() {
        let linger = |file: &str, kafka: &[&str]| {
            let file: FileConfig = toml::from_str(file).unwrap();
            let overrides = Overrides {
                kafka: kafka.iter().map(|k| k.to_string()).collect(),
                ..Default::default()
            };
            let c = EngineConfig::resolve(file, &overrides).unwrap();
            let client = ClientSettings {
                bootstrap_servers: "b:9092".into(),
                properties: c.kafka_properties,
            };
            client
                .client_config(crate::kafka::ClientRole::Producer)
                .get("linger.ms")
                .map(str::to_string)
        };
        assert_eq!(linger("", &[]).as_deref(), Some("5"), "latency by default");
        let throughput = "[runtime]\noptimize_for = \"throughput\"";
        assert_eq!(linger(throughput, &[]).as_deref(), Some("100"));
        assert_eq!(linger(throughput, &["linger.ms=7"]).as_deref(), Some("7"));
        assert_eq!(
            linger(throughput, &["producer.linger.ms=8"]).as_deref(),
            Some("8")
        );
        let err = toml::from_str::<FileConfig>("[runtime]\noptimize_for = \"speed\"").unwrap_err();
        assert!(
            err.to_string()
                .contains("unknown variant `speed`, expected `latency` or `throughput`"),
            "{err}"
        );
    }

    #[test]
    fn unknown_keys_are_refused_naming_the_key() {
        let err = toml::from_str::<FileConfig>("[kafka]\nbootstrap = \"x\"").unwrap_err();
        assert!(
            err.to_string().contains("unknown field `bootstrap`"),
            "{err}"
        );
    }

    #[test]
    fn exactly_once_commits_every_25_ms_for_latency_and_100_for_throughput_and_refuses_settings_that_contradict_it()
     {
        let eos = |file: &str, kafka: &[&str]| {
            let file: FileConfig = toml::from_str(file).unwrap();
            let overrides = Overrides {
                kafka: kafka.iter().map(|k| k.to_string()).collect(),
                processing_guarantee: Some(ProcessingGuarantee::ExactlyOnceV2),
                ..Default::default()
            };
            EngineConfig::resolve(file, &overrides)
        };
        let c = eos("", &[]).unwrap();
        assert!(c.processing_guarantee.exactly_once());
        assert_eq!(c.commit_interval, Duration::from_millis(25));
        assert_eq!(
            eos("[runtime]\noptimize_for = \"throughput\"", &[])
                .unwrap()
                .commit_interval,
            Duration::from_millis(100)
        );
        assert_eq!(
            eos("[runtime]\ncommit_interval_ms = 250", &[])
                .unwrap()
                .commit_interval,
            Duration::from_millis(250),
            "an explicit interval wins"
        );
        let file: FileConfig =
            toml::from_str("[runtime]\nprocessing_guarantee = \"exactly_once_v2\"").unwrap();
        assert!(
            EngineConfig::resolve(file, &Overrides::default())
                .unwrap()
                .processing_guarantee
                .exactly_once(),
            "also from the file"
        );
        let ConfigError::Invalid(problems) = eos(
            "",
            &[
                "producer.enable.idempotence=false",
                "isolation.level=read_uncommitted",
                "transactional.id=mine",
            ],
        )
        .unwrap_err() else {
            panic!("expected Invalid");
        };
        assert_eq!(problems.len(), 3, "{problems:#?}");
        assert!(
            problems
                .iter()
                .all(|p| p.contains("remove") || p.contains("derives it from the application id")),
            "each says how to fix it: {problems:#?}"
        );
        // The same settings are fine at least once (but the transactional id).
        let file = FileConfig::default();
        let overrides = Overrides {
            kafka: vec![
                "producer.enable.idempotence=false".into(),
                "isolation.level=read_uncommitted".into(),
            ],
            ..Default::default()
        };
        assert!(EngineConfig::resolve(file, &overrides).is_ok());
        let unknown =
            toml::from_str::<FileConfig>("[runtime]\nprocessing_guarantee = \"exactly_once\"")
                .unwrap_err()
                .to_string();
        assert!(
            unknown.contains("at_least_once") && unknown.contains("exactly_once_v2"),
            "{unknown}"
        );
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let file: FileConfig = toml::from_str("[runtime]\nmax_in_flight = 0").unwrap();
        let overrides = Overrides {
            schema_registry_url: Some("localhost:8081".into()),
            kafka: vec!["no-equals-sign".into(), "group.id=x".into()],
            ..Default::default()
        };
        let ConfigError::Invalid(problems) = EngineConfig::resolve(file, &overrides).unwrap_err()
        else {
            panic!("expected Invalid");
        };
        assert_eq!(problems.len(), 4, "{problems:#?}");
        assert!(problems.iter().any(|p| p.contains("KEY=VALUE")));
        assert!(problems.iter().any(|p| p.contains("max_in_flight")));
        assert!(problems.iter().any(|p| p.contains("http://")));
        assert!(problems.iter().any(|p| p.contains("group.id")));
    }
}
