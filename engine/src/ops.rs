//! The operations endpoint of `engine run --http ADDR`: health (live and ready; broker,
//! registry and fallback state), Prometheus metrics, and interactive queries of the
//! stores this instance holds.
//!
//! A key whose partition another instance holds is answered with `421 Misdirected
//! Request` naming that instance (from the announcements the runtime reads), like Kafka
//! Streams' `queryMetadataForKey`.
//!
//! The runtime registers each topology's metrics, each task's stores and the other
//! instances' announcements here; the HTTP handlers only read. May depend on `metrics`,
//! `state`, `serde` and Kafka's default partitioner in `kafka`.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{SystemTime, UNIX_EPOCH};

use axum::Json;
use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::{Value, json};

use rdkafka::producer::FutureProducer;

use crate::metrics::{HistogramSnapshot, TopologyMetrics};
use crate::serde::RegistryHealth;
use crate::state::{BytesStore, ScanRequest, StoreQuery};

/// One store of one task as queries see it.
#[derive(Clone)]
pub(crate) struct QueryableStore {
    pub application: String,
    pub store: Arc<dyn BytesStore>,
    pub query: Arc<StoreQuery>,
    pub restoring: bool,
}

impl std::fmt::Debug for QueryableStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QueryableStore")
            .field("application", &self.application)
            .field("restoring", &self.restoring)
            .finish()
    }
}

/// How to find the partition of a key of a store, wherever it is held.
#[derive(Clone, Debug)]
pub(crate) struct StoreRoute {
    pub application: String,
    /// Partitions of the topology's source topics.
    pub partitions: i32,
    pub query: Arc<StoreQuery>,
}

/// Announcements of the instances of one application.
#[derive(Debug, Default)]
struct Instances {
    /// This instance's advertised address.
    local: Option<String>,
    /// Per advertised address: the partitions announced last, and that announcement's
    /// offset in the instances topic.
    announced: BTreeMap<String, (Vec<i32>, i64)>,
}

/// What the operations endpoint reports; shared by the runtime and the HTTP server.
#[derive(Debug, Default)]
pub struct OpsState {
    topologies: RwLock<BTreeMap<String, Arc<TopologyMetrics>>>,
    routes: RwLock<BTreeMap<String, StoreRoute>>,
    instances: RwLock<BTreeMap<String, Instances>>,
    running: RwLock<BTreeMap<String, bool>>,
    stores: RwLock<BTreeMap<(String, i32), QueryableStore>>,
    registry: RwLock<Option<Arc<RegistryHealth>>>,
    broker_reachable: AtomicBool,
}

fn read<T>(lock: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(|p| p.into_inner())
}

fn write<T>(lock: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    lock.write().unwrap_or_else(|p| p.into_inner())
}

impl OpsState {
    /// Registers a topology's metrics.
    pub fn add_topology(&self, application: &str, metrics: Arc<TopologyMetrics>) {
        write(&self.topologies).insert(application.to_string(), metrics);
    }

    /// Marks a topology as running (ready) or not.
    pub fn set_running(&self, application: &str, running: bool) {
        write(&self.running).insert(application.to_string(), running);
    }

    /// Records that the broker answered.
    pub fn set_broker_reachable(&self, reachable: bool) {
        self.broker_reachable.store(reachable, Ordering::Relaxed);
    }

    /// The registry health to report.
    pub fn set_registry(&self, health: Arc<RegistryHealth>) {
        *write(&self.registry) = Some(health);
    }

    pub(crate) fn put_store(&self, name: &str, partition: i32, store: QueryableStore) {
        write(&self.stores).insert((name.to_string(), partition), store);
    }

    pub(crate) fn remove_store(&self, name: &str, partition: i32) {
        write(&self.stores).remove(&(name.to_string(), partition));
    }

    /// Whether store `name`'s partition is published for queries.
    #[cfg(test)]
    pub(crate) fn holds_store(&self, name: &str, partition: i32) -> bool {
        read(&self.stores).contains_key(&(name.to_string(), partition))
    }

    pub(crate) fn put_route(&self, store: &str, route: StoreRoute) {
        write(&self.routes).insert(store.to_string(), route);
    }

    /// Sets the address this instance advertises for `application`.
    pub(crate) fn set_advertised(&self, application: &str, http: &str) {
        write(&self.instances)
            .entry(application.to_string())
            .or_default()
            .local = Some(http.to_string());
    }

    /// Records an announcement read at `offset` of the instances topic.
    pub(crate) fn announced(
        &self,
        application: &str,
        http: &str,
        partitions: Vec<i32>,
        offset: i64,
    ) {
        write(&self.instances)
            .entry(application.to_string())
            .or_default()
            .announced
            .insert(http.to_string(), (partitions, offset));
    }

    /// The advertised address of the instance that announced `partition` last, unless
    /// that is this instance (then the partition is arriving or leaving here).
    fn owner(&self, application: &str, partition: i32) -> Option<String> {
        let instances = read(&self.instances);
        let app = instances.get(application)?;
        let (http, _) = app
            .announced
            .iter()
            .filter(|(_, (partitions, _))| partitions.contains(&partition))
            .max_by_key(|(_, (_, offset))| *offset)?;
        (app.local.as_ref() != Some(http)).then(|| http.clone())
    }

    fn ready(&self) -> bool {
        let running = read(&self.running);
        !running.is_empty()
            && running.values().all(|r| *r)
            && !read(&self.stores).values().any(|s| s.restoring)
    }

    /// Prometheus text exposition of every counter.
    pub fn prometheus(&self) -> String {
        let mut out = String::new();
        let topologies = read(&self.topologies);
        type Pick = fn(&crate::metrics::MetricsSnapshot) -> u64;
        let series: [(&str, &str, &str, Pick); 18] = [
            (
                "engine_records_in_total",
                "counter",
                "Records consumed.",
                |m| m.records_in,
            ),
            (
                "engine_records_out_total",
                "counter",
                "Records produced and acknowledged.",
                |m| m.records_out,
            ),
            (
                "engine_deserialization_errors_total",
                "counter",
                "Records that did not deserialize.",
                |m| m.deserialization_errors,
            ),
            (
                "engine_processing_errors_total",
                "counter",
                "Records whose processing failed.",
                |m| m.processing_errors,
            ),
            (
                "engine_production_errors_total",
                "counter",
                "Records the broker refused.",
                |m| m.production_errors,
            ),
            (
                "engine_skipped_total",
                "counter",
                "Records skipped by the error policy.",
                |m| m.skipped,
            ),
            (
                "engine_dead_lettered_total",
                "counter",
                "Records written to a dead-letter topic.",
                |m| m.dead_lettered,
            ),
            (
                "engine_in_flight",
                "gauge",
                "Input records with unacknowledged outputs.",
                |m| m.in_flight,
            ),
            (
                "engine_pauses_total",
                "counter",
                "Times the in-flight bound stopped taking records in.",
                |m| m.pauses,
            ),
            (
                "engine_consumer_fetched_records_total",
                "counter",
                "Records the consumer received from brokers, records fetched again included (with statistics.interval.ms set).",
                |m| m.fetched,
            ),
            ("engine_commits_total", "counter", "Offset commits.", |m| {
                m.commits
            }),
            (
                "engine_assigned_partitions",
                "gauge",
                "Partitions assigned to this instance.",
                |m| m.assigned_partitions,
            ),
            (
                "engine_rebalances_total",
                "counter",
                "Assignments received from the consumer group.",
                |m| m.rebalances,
            ),
            (
                "engine_transactions_aborted_total",
                "counter",
                "Transactions aborted under exactly-once (the tasks rewound to their last commit).",
                |m| m.transactions_aborted,
            ),
            (
                "engine_restored_records_total",
                "counter",
                "Changelog records applied while restoring.",
                |m| m.restored_records,
            ),
            (
                "engine_replayed_skipped_total",
                "counter",
                "Reprocessed records skipped because the restored stores already held them.",
                |m| m.replayed_skipped,
            ),
            (
                "engine_global_restored_records_total",
                "counter",
                "Global table records read while bootstrapping global stores.",
                |m| m.global_restored_records,
            ),
            (
                "engine_global_records_total",
                "counter",
                "Global table records applied after the bootstrap.",
                |m| m.global_records,
            ),
        ];
        for (name, kind, help, pick) in series {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
            for (app, metrics) in topologies.iter() {
                let _ = writeln!(
                    out,
                    "{name}{{application=\"{app}\"}} {}",
                    pick(&metrics.snapshot())
                );
            }
        }
        type Histo = fn(&TopologyMetrics) -> HistogramSnapshot;
        let histograms: [(&str, &str, Histo); 2] = [
            (
                "engine_processing_latency_seconds",
                "Time from taking a record from the consumer to the end of its processing.",
                |m| m.processing_latency.snapshot(),
            ),
            (
                "engine_record_e2e_latency_seconds",
                "Time from a record's timestamp to the end of its processing.",
                |m| m.e2e_latency.snapshot(),
            ),
        ];
        for (name, help, pick) in histograms {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
            for (app, metrics) in topologies.iter() {
                write_histogram(
                    &mut out,
                    name,
                    &format!("application=\"{app}\""),
                    &pick(metrics),
                );
            }
        }
        let _ = writeln!(
            out,
            "# HELP engine_consumer_lag Records between this instance's position and the end of each assigned partition.\n# TYPE engine_consumer_lag gauge"
        );
        for (app, metrics) in topologies.iter() {
            for lag in metrics.consumer_lag() {
                let _ = writeln!(
                    out,
                    "engine_consumer_lag{{application=\"{app}\",topic=\"{}\",partition=\"{}\"}} {}",
                    lag.topic, lag.partition, lag.lag
                );
            }
        }
        let _ = writeln!(
            out,
            "# HELP engine_store_entries Approximate entries per store and partition.\n# TYPE engine_store_entries gauge"
        );
        for ((store, partition), s) in read(&self.stores).iter() {
            let _ = writeln!(
                out,
                "engine_store_entries{{application=\"{}\",store=\"{store}\",partition=\"{partition}\"}} {}",
                s.application,
                s.store.approximate_len()
            );
        }
        if let Some(health) = read(&self.registry).as_ref() {
            let _ = writeln!(
                out,
                "# HELP engine_registry_fallback Whether serializers fell back to JSON.\n# TYPE engine_registry_fallback gauge\nengine_registry_fallback {}",
                u8::from(health.degraded())
            );
            let _ = writeln!(
                out,
                "# HELP engine_registry_fallback_records_total Records written as JSON by the fallback.\n# TYPE engine_registry_fallback_records_total counter\nengine_registry_fallback_records_total {}",
                health.fallback_records()
            );
        }
        out
    }
}

/// One histogram's `_bucket` (cumulative, ending with `+Inf`), `_sum` and `_count` lines.
fn write_histogram(out: &mut String, name: &str, labels: &str, h: &HistogramSnapshot) {
    for (bound, n) in &h.buckets {
        let _ = writeln!(out, "{name}_bucket{{{labels},le=\"{bound}\"}} {n}");
    }
    let _ = writeln!(out, "{name}_bucket{{{labels},le=\"+Inf\"}} {}", h.count);
    let _ = writeln!(out, "{name}_sum{{{labels}}} {}", h.sum_seconds);
    let _ = writeln!(out, "{name}_count{{{labels}}} {}", h.count);
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

async fn health(State(ops): State<Arc<OpsState>>) -> Response {
    let ready = ops.ready();
    let registry = read(&ops.registry).as_ref().map(
        |h| json!({"fallback_to_json": h.degraded(), "fallback_records": h.fallback_records()}),
    );
    let body = json!({
        "live": true,
        "ready": ready,
        "status": if registry.as_ref().is_some_and(|r| r["fallback_to_json"] == true) { "degraded" } else if ready { "ok" } else { "starting" },
        "broker": {"reachable": ops.broker_reachable.load(Ordering::Relaxed)},
        "registry": registry,
        "topologies": read(&ops.running).clone(),
        "restoring": read(&ops.stores).iter().filter(|(_, s)| s.restoring).map(|((n, p), _)| format!("{n}/{p}")).collect::<Vec<_>>(),
    });
    let code = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, Json(body)).into_response()
}

/// Liveness alone: 200 whenever the executor serves requests, also while stores restore
/// and during the shutdown, when `/health` answers 503. What an orchestrator's liveness
/// probe should ask: a restart would only start a restore over.
async fn live() -> Response {
    Json(json!({"live": true})).into_response()
}

async fn metrics(State(ops): State<Arc<OpsState>>) -> Response {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4",
        )],
        ops.prometheus(),
    )
        .into_response()
}

fn error(code: StatusCode, message: String) -> Response {
    (code, Json(json!({"error": message}))).into_response()
}

fn local_partitions(ops: &OpsState, store: &str) -> Vec<(i32, QueryableStore)> {
    read(&ops.stores)
        .iter()
        .filter(|((name, _), _)| name == store)
        .map(|((_, p), s)| (*p, s.clone()))
        .collect()
}

async fn store_key(
    State(ops): State<Arc<OpsState>>,
    uri: axum::http::Uri,
    Path((store, key)): Path<(String, String)>,
) -> Response {
    lookup(&ops, store, key, &uri)
}

/// Answers for a key held elsewhere (or nowhere known): `421` naming the instance that
/// announced the key's partition last, with `Location` set to the same request there;
/// else `404`.
fn elsewhere(
    ops: &OpsState,
    store: &str,
    key: &str,
    uri: &axum::http::Uri,
    local: &[i32],
) -> Response {
    let held_here = || {
        if local.is_empty() {
            format!("no partition of store `{store}` is held by this instance")
        } else {
            format!(
                "key `{key}` not found in the partitions of `{store}` this instance holds ({local:?})"
            )
        }
    };
    let Some(route) = read(&ops.routes).get(store).cloned() else {
        return error(StatusCode::NOT_FOUND, held_here());
    };
    let bytes = match route.query.key_bytes(key) {
        Ok(b) => b,
        Err(e) => return error(StatusCode::BAD_REQUEST, e.to_string()),
    };
    let partition = crate::kafka::default_partition(&bytes, route.partitions);
    if local.contains(&partition) {
        return error(StatusCode::NOT_FOUND, held_here());
    }
    match ops.owner(&route.application, partition) {
        Some(owner) => {
            let owner = format!("http://{owner}");
            let location = format!(
                "{owner}{}",
                uri.path_and_query().map_or(uri.path(), |p| p.as_str())
            );
            (
                StatusCode::MISDIRECTED_REQUEST,
                [(axum::http::header::LOCATION, location.clone())],
                Json(json!({
                    "error": "not local",
                    "store": store,
                    "key": key,
                    "partition": partition,
                    "owner": owner,
                    "location": location,
                })),
            )
                .into_response()
        }
        None => error(
            StatusCode::NOT_FOUND,
            format!(
                "key `{key}` belongs to partition {partition} of `{store}`, which this instance does not hold and no other instance has announced"
            ),
        ),
    }
}

/// `key` in the partitions of `store` this instance holds: the partition and entry, or
/// (not found) the partitions searched. A restoring partition makes it unavailable.
fn local_get(
    ops: &OpsState,
    store: &str,
    key: &str,
) -> Result<Result<(i32, crate::state::JsonEntry), Vec<i32>>, ServiceError> {
    let partitions = local_partitions(ops, store);
    let now = now_ms();
    for (partition, s) in &partitions {
        if s.restoring {
            return Err(restoring(store, *partition));
        }
        match s.query.get(&*s.store, key, now) {
            Ok(Some(entry)) => return Ok(Ok((*partition, entry))),
            Ok(None) => {}
            Err(e) => return Err(ServiceError::BadRequest(e.to_string())),
        }
    }
    Ok(Err(partitions.iter().map(|(p, _)| *p).collect()))
}

/// The entries of `request` in each partition of `store` this instance holds. A
/// restoring partition makes it unavailable.
fn local_scan(
    ops: &OpsState,
    store: &str,
    request: &ScanRequest,
) -> Result<Vec<(i32, Vec<crate::state::JsonEntry>)>, ServiceError> {
    let now = now_ms();
    let mut partitions = Vec::new();
    for (partition, s) in local_partitions(ops, store) {
        if s.restoring {
            return Err(restoring(store, partition));
        }
        let found = s
            .query
            .scan(&*s.store, request, now)
            .map_err(|e| ServiceError::BadRequest(e.to_string()))?;
        partitions.push((partition, found));
    }
    Ok(partitions)
}

fn lookup(ops: &OpsState, store: String, key: String, uri: &axum::http::Uri) -> Response {
    match local_get(ops, &store, &key) {
        Ok(Ok((partition, (k, v)))) => {
            Json(json!({"store": store, "partition": partition, "key": k, "value": v}))
                .into_response()
        }
        Ok(Err(local)) => elsewhere(ops, &store, &key, uri, &local),
        Err(e) => error(e.status(), e.to_string()),
    }
}

#[derive(serde::Deserialize)]
struct ScanParams {
    from: Option<String>,
    to: Option<String>,
    prefix: Option<String>,
    limit: Option<usize>,
}

async fn store_scan(
    State(ops): State<Arc<OpsState>>,
    Path(store): Path<String>,
    Query(params): Query<ScanParams>,
) -> Response {
    if local_partitions(&ops, &store).is_empty() {
        return error(
            StatusCode::NOT_FOUND,
            format!("no partition of store `{store}` is held by this instance"),
        );
    }
    let request = ScanRequest {
        from: params.from,
        to: params.to,
        prefix: params.prefix,
        limit: params.limit.unwrap_or(1000),
    };
    let mut entries: Vec<Value> = match local_scan(&ops, &store, &request) {
        Ok(found) => found
            .into_iter()
            .flat_map(|(partition, entries)| {
                entries
                    .into_iter()
                    .map(move |(k, v)| json!({"partition": partition, "key": k, "value": v}))
            })
            .collect(),
        Err(e) => return error(e.status(), e.to_string()),
    };
    entries.truncate(request.limit);
    Json(json!({"store": store, "entries": entries})).into_response()
}

/// The endpoint's routes over `ops`, plus `GET {path}/{key}` for each exposed
/// `(path, store)` and each topology's own routes ([`TopologyBuilder::serve_http`]),
/// whose records go out through a producer configured by `client`.
///
/// [`TopologyBuilder::serve_http`]: crate::topology::TopologyBuilder::serve_http
pub fn router(
    ops: Arc<OpsState>,
    topologies: &[crate::topology::Topology],
    client: &crate::kafka::ClientSettings,
) -> Router {
    let mut router = Router::new()
        .route("/health", get(health))
        .route("/health/live", get(live))
        .route("/metrics", get(metrics))
        .route("/stores/{store}", get(store_scan))
        .route("/stores/{store}/{key}", get(store_key));
    for (path, store) in topologies.iter().flat_map(|t| t.exposed_stores()) {
        let store = store.clone();
        router = router.route(
            &format!("{path}/{{key}}"),
            get(
                move |State(ops): State<Arc<OpsState>>,
                      uri: axum::http::Uri,
                      Path(key): Path<String>| {
                    let store = store.clone();
                    async move { lookup(&ops, store, key, &uri) }
                },
            ),
        );
    }
    let mut router = router.with_state(ops.clone());
    // Created once, for the first topology that serves routes of its own.
    let mut shared: Option<(Result<FutureProducer, String>, ureq::Agent)> = None;
    for topology in topologies {
        for routes in topology.services() {
            let (producer, peers) = shared
                .get_or_insert_with(|| {
                    let producer = client
                        .client_config(crate::kafka::ClientRole::Producer)
                        .create::<FutureProducer>()
                        .map_err(|e| crate::kafka::kafka_reason(&e));
                    let peers = ureq::Agent::config_builder()
                        .timeout_global(Some(PEER_TIMEOUT))
                        .http_status_as_error(false)
                        .build()
                        .new_agent();
                    (producer, peers)
                })
                .clone();
            router = router.merge(routes(ServiceContext {
                ops: ops.clone(),
                application: topology.application_id().to_string(),
                producer,
                peers,
            }));
        }
    }
    router
}

/// Binds `addr` and returns the bound address and the server future.
pub fn serve(
    ops: Arc<OpsState>,
    topologies: &[crate::topology::Topology],
    client: &crate::kafka::ClientSettings,
    addr: SocketAddr,
) -> std::io::Result<(
    SocketAddr,
    impl Future<Output = std::io::Result<()>> + Send + 'static,
)> {
    let listener = std::net::TcpListener::bind(addr)?;
    listener.set_nonblocking(true)?;
    let local = listener.local_addr()?;
    let app = router(ops, topologies, client);
    Ok((local, async move {
        let listener = tokio::net::TcpListener::from_std(listener)?;
        axum::serve(listener, app).await
    }))
}

/// Builds a topology's own HTTP routes from what they reach the topology through.
pub type ServiceRoutes = Arc<dyn Fn(ServiceContext) -> Router + Send + Sync>;

/// Why a service's request to the topology could not be answered.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServiceError {
    /// Not answerable now (a store restoring, a partition between owners, an owner not
    /// answering): the client should retry. HTTP 503.
    #[error("{0}")]
    Unavailable(String),
    /// The request itself is wrong (a key the store cannot hold). HTTP 400.
    #[error("{0}")]
    BadRequest(String),
    /// The broker did not take a record. HTTP 500.
    #[error("{0}")]
    NotSent(String),
}

impl ServiceError {
    /// The HTTP status this error answers with.
    pub fn status(&self) -> StatusCode {
        match self {
            ServiceError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ServiceError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ServiceError::NotSent(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

/// What a topology's own HTTP handlers reach the topology through: its stores, on
/// whichever instance holds each key (this one, or the one that announced the key's
/// partition, asked over HTTP), and its topics, through a producer of the endpoint.
#[derive(Clone)]
pub struct ServiceContext {
    ops: Arc<OpsState>,
    application: String,
    producer: Result<FutureProducer, String>,
    /// Asks the other instances (one connection pool for every request).
    peers: ureq::Agent,
}

impl std::fmt::Debug for ServiceContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServiceContext")
            .field("application", &self.application)
            .finish()
    }
}

/// How long a request to another instance may take.
const PEER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

impl ServiceContext {
    /// The value stored under `key` (written as text, as in `/stores/{store}/{key}`) in
    /// store `store`, as JSON, from this instance or the one holding the key's partition.
    pub async fn get(
        &self,
        store: &str,
        key: &str,
    ) -> Result<Option<serde_json::Value>, ServiceError> {
        let local = match local_get(&self.ops, store, key)? {
            Ok((_, (_, value))) => return Ok(Some(value)),
            Err(local) => local,
        };
        let route = read(&self.ops.routes).get(store).cloned().ok_or_else(|| {
            ServiceError::Unavailable(format!("store `{store}` is not open on this instance yet"))
        })?;
        let bytes = route
            .query
            .key_bytes(key)
            .map_err(|e| ServiceError::BadRequest(e.to_string()))?;
        let partition = crate::kafka::default_partition(&bytes, route.partitions);
        if local.contains(&partition) {
            return Ok(None);
        }
        let owner = self
            .ops
            .owner(&self.application, partition)
            .ok_or_else(|| unowned(store, partition))?;
        let url = format!("http://{owner}/stores/{}/{}", escape(store), escape(key));
        match peer_get(&self.peers, url).await? {
            (200, body) => Ok(Some(body["value"].clone())),
            (404, _) => Ok(None),
            (status, body) => Err(ServiceError::Unavailable(format!(
                "the instance at {owner} holding partition {partition} of `{store}` answered {status}: {body}"
            ))),
        }
    }

    /// Every entry of store `store`, `(key, value)` as JSON, from every partition: those
    /// held here and, asked over HTTP, those the other instances announced. A partition
    /// no instance holds now (a rebalance in progress) makes this unavailable, rather
    /// than answered with part of the store.
    pub async fn entries(
        &self,
        store: &str,
    ) -> Result<Vec<(serde_json::Value, serde_json::Value)>, ServiceError> {
        let route = read(&self.ops.routes).get(store).cloned().ok_or_else(|| {
            ServiceError::Unavailable(format!("store `{store}` is not open on this instance yet"))
        })?;
        let all = ScanRequest {
            limit: usize::MAX,
            ..ScanRequest::default()
        };
        let mut covered = std::collections::BTreeSet::new();
        let mut entries = Vec::new();
        for (partition, found) in local_scan(&self.ops, store, &all)? {
            covered.insert(partition);
            entries.extend(found);
        }
        let mut owners: BTreeMap<String, Vec<i32>> = BTreeMap::new();
        for partition in (0..route.partitions).filter(|p| !covered.contains(p)) {
            let owner = self
                .ops
                .owner(&self.application, partition)
                .ok_or_else(|| unowned(store, partition))?;
            owners.entry(owner).or_default().push(partition);
        }
        for (owner, partitions) in owners {
            let url = format!("http://{owner}/stores/{}?limit={}", escape(store), u32::MAX);
            let body = match peer_get(&self.peers, url).await? {
                (200, body) => body,
                (status, body) => {
                    return Err(ServiceError::Unavailable(format!(
                        "the instance at {owner} holding partitions {partitions:?} of `{store}` answered {status}: {body}"
                    )));
                }
            };
            for entry in body["entries"].as_array().into_iter().flatten() {
                let partition = entry["partition"]
                    .as_i64()
                    .and_then(|p| i32::try_from(p).ok());
                if partition.is_some_and(|p| partitions.contains(&p)) {
                    entries.push((entry["key"].clone(), entry["value"].clone()));
                }
            }
        }
        Ok(entries)
    }

    /// Produces a record to `topic` and waits for the broker's acknowledgement:
    /// `(partition, offset)`.
    pub async fn send(
        &self,
        topic: &str,
        key: Option<&[u8]>,
        payload: &[u8],
    ) -> Result<(i32, i64), ServiceError> {
        let producer = self.producer.as_ref().map_err(|e| {
            ServiceError::NotSent(format!("the endpoint's producer could not be created: {e}"))
        })?;
        let mut record = rdkafka::producer::FutureRecord::<[u8], [u8]>::to(topic).payload(payload);
        if let Some(key) = key {
            record = record.key(key);
        }
        producer
            .send(record, std::time::Duration::from_secs(10))
            .await
            .map(|delivery| (delivery.partition, delivery.offset))
            .map_err(|(e, _)| {
                ServiceError::NotSent(format!(
                    "the broker did not take the record for `{topic}`: {}",
                    crate::kafka::kafka_reason(&e)
                ))
            })
    }
}

fn restoring(store: &str, partition: i32) -> ServiceError {
    ServiceError::Unavailable(format!(
        "store `{store}` partition {partition} is restoring; retry shortly"
    ))
}

fn unowned(store: &str, partition: i32) -> ServiceError {
    ServiceError::Unavailable(format!(
        "partition {partition} of `{store}` is held by no instance that announced it (a rebalance in progress?); retry shortly"
    ))
}

/// Percent-encodes everything but RFC 3986's unreserved characters.
fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

/// GETs `url` from another instance: its status and JSON body.
async fn peer_get(
    agent: &ureq::Agent,
    url: String,
) -> Result<(u16, serde_json::Value), ServiceError> {
    let agent = agent.clone();
    tokio::task::spawn_blocking(move || {
        let mut response = agent
            .get(&url)
            .call()
            .map_err(|e| ServiceError::Unavailable(format!("GET {url}: {e}")))?;
        let status = response.status().as_u16();
        let text = response
            .body_mut()
            .with_config()
            .limit(u64::MAX)
            .read_to_string()
            .map_err(|e| ServiceError::Unavailable(format!("GET {url}: {e}")))?;
        let body = serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text));
        Ok((status, body))
    })
    .await
    .map_err(|e| ServiceError::Unavailable(e.to_string()))?
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::time::Duration;

    use super::*;

    /// `name{labels} value` lines of one metric family, in order: (series name, labels,
    /// value).
    fn samples<'a>(text: &'a str, family: &str) -> Vec<(&'a str, &'a str, f64)> {
        text.lines()
            .filter(|l| !l.starts_with('#') && l.starts_with(family))
            .map(|l| {
                let (series, value) = l.rsplit_once(' ').unwrap();
                let (name, labels) = series.split_once('{').unwrap();
                (name, labels.trim_end_matches('}'), value.parse().unwrap())
            })
            .collect()
    }

    #[test]
    fn the_latest_announcement_of_a_partition_names_its_owner() {
        let ops = OpsState::default();
        ops.set_advertised("app", "c:3");
        ops.announced("app", "a:1", vec![0, 1], 10);
        ops.announced("app", "b:2", vec![2, 3], 11);
        assert_eq!(ops.owner("app", 0).as_deref(), Some("a:1"));
        assert_eq!(ops.owner("app", 3).as_deref(), Some("b:2"));
        assert_eq!(
            ops.owner("other-app", 0),
            None,
            "announcements are per application"
        );
        // A stopped without a word (it crashed); B announced everything after the
        // rebalance: B's later claim wins over A's stale one.
        ops.announced("app", "b:2", vec![0, 1, 2, 3], 15);
        assert_eq!(ops.owner("app", 0).as_deref(), Some("b:2"));
        // This instance took partition 1 over: not redirected to B, nor to itself.
        ops.announced("app", "c:3", vec![1], 16);
        assert_eq!(ops.owner("app", 1), None);
        assert_eq!(ops.owner("app", 2).as_deref(), Some("b:2"));
        // B leaves cleanly: nobody is named for its partitions any more.
        ops.announced("app", "b:2", vec![], 17);
        assert_eq!(ops.owner("app", 2), None);
    }

    #[test]
    fn latency_histograms_render_as_valid_prometheus_histograms() {
        let ops = OpsState::default();
        let metrics = Arc::new(TopologyMetrics::default());
        for micros in [20, 150, 150, 900, 4_000, 30_000, 2_000_000, 20_000_000] {
            metrics
                .processing_latency
                .observe(Duration::from_micros(micros));
        }
        ops.add_topology("app", metrics);
        let text = ops.prometheus();
        let name = "engine_processing_latency_seconds";
        assert_eq!(
            text.matches(&format!("# TYPE {name} histogram\n")).count(),
            1,
            "{text}"
        );
        let lines = samples(&text, name);
        let buckets: Vec<(f64, f64)> = lines
            .iter()
            .filter(|(n, _, _)| n.ends_with("_bucket"))
            .map(|(_, labels, v)| {
                assert!(labels.starts_with("application=\"app\",le=\""), "{labels}");
                let le = labels.split("le=\"").nth(1).unwrap().trim_end_matches('"');
                let le = if le == "+Inf" {
                    f64::INFINITY
                } else {
                    le.parse().unwrap()
                };
                (le, *v)
            })
            .collect();
        assert_eq!(
            buckets.len(),
            crate::metrics::PROCESSING_LATENCY_BOUNDS.len() + 1
        );
        assert!(
            buckets
                .windows(2)
                .all(|w| w[0].0 < w[1].0 && w[0].1 <= w[1].1),
            "bounds increase and counts are cumulative: {buckets:?}"
        );
        assert_eq!(
            buckets.last().unwrap().0,
            f64::INFINITY,
            "the last bucket is +Inf"
        );
        let count = lines
            .iter()
            .find(|(n, _, _)| n.ends_with("_count"))
            .unwrap()
            .2;
        let sum = lines
            .iter()
            .find(|(n, _, _)| n.ends_with("_sum"))
            .unwrap()
            .2;
        assert_eq!(buckets.last().unwrap().1, count, "+Inf equals _count");
        assert_eq!(count, 8.0);
        assert_eq!(
            buckets[0],
            (0.0001, 1.0),
            "only the 20 µs record is <= 100 µs"
        );
        assert_eq!(
            buckets.iter().find(|(le, _)| *le == 10.0).unwrap().1,
            7.0,
            "20 s is above the last finite bound"
        );
        assert!((sum - 22.035_22).abs() < 1e-6, "sum in seconds: {sum}");
        // The end-to-end histogram is rendered too, empty but complete.
        let e2e = samples(&text, "engine_record_e2e_latency_seconds");
        assert!(
            e2e.iter()
                .any(|(n, l, v)| n.ends_with("_bucket") && l.contains("+Inf") && *v == 0.0)
        );
        assert!(
            e2e.iter()
                .any(|(n, _, v)| n.ends_with("_count") && *v == 0.0)
        );
    }
}
