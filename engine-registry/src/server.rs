//! An axum server exposing a `MemoryRegistry` through Confluent's Schema Registry REST API,
//! so clients we did not write (confluent-kafka, Java serdes, kcat) can use it.
//!
//! Depends on `super::{memory, error, compatibility}`, axum and tokio. Handlers call the
//! registry directly: its lock is a std `Mutex` held only inside each synchronous call,
//! never across an `.await`.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::compatibility::Compatibility;
use super::error::{INVALID_SCHEMA, RegistryError, SCHEMA_NOT_FOUND};
use super::memory::MemoryRegistry;
use super::{CONTENT_TYPE, VersionRef};

type Registry = State<Arc<MemoryRegistry>>;
type Params = Query<HashMap<String, String>>;

/// Binds `addr` and returns the bound address and the future that serves requests.
///
/// Binding happens before returning so a caller that asked for port 0 can report the
/// real port; the future must be driven on a tokio runtime (e.g. `tokio::spawn`) and runs
/// until dropped or until the listener fails.
pub fn serve(
    registry: Arc<MemoryRegistry>,
    addr: SocketAddr,
) -> std::io::Result<(
    SocketAddr,
    impl Future<Output = std::io::Result<()>> + Send + 'static,
)> {
    let listener = std::net::TcpListener::bind(addr)?;
    // tokio requires a non-blocking socket when adopting a std listener.
    listener.set_nonblocking(true)?;
    let local = listener.local_addr()?;
    let app = router(registry);
    Ok((local, async move {
        let listener = tokio::net::TcpListener::from_std(listener)?;
        tracing::info!(addr = %local, "schema registry listening");
        axum::serve(listener, app).await
    }))
}

/// The REST routes over `registry`, for embedding in another axum app.
pub fn router(registry: Arc<MemoryRegistry>) -> Router {
    Router::new()
        .route("/", get(root))
        .route("/subjects", get(subjects))
        .route("/subjects/{subject}", post(lookup).delete(delete_subject))
        .route("/subjects/{subject}/versions", get(versions).post(register))
        .route("/subjects/{subject}/versions/{version}", get(version))
        .route(
            "/subjects/{subject}/versions/{version}/schema",
            get(version_schema),
        )
        .route("/schemas/types", get(schema_types))
        .route("/schemas/ids/{id}", get(schema_by_id))
        .route("/schemas/ids/{id}/versions", get(schema_versions))
        .route(
            "/compatibility/subjects/{subject}/versions",
            post(check_all),
        )
        .route(
            "/compatibility/subjects/{subject}/versions/{version}",
            post(check_version),
        )
        .route("/config", get(global_config).put(set_global_config))
        .route(
            "/config/{subject}",
            get(subject_config).put(set_subject_config),
        )
        .fallback(not_found)
        .with_state(registry)
}

/// A Confluent-style error response: `{"error_code": N, "message": "..."}`.
#[derive(Debug)]
struct ApiError {
    status: StatusCode,
    error_code: i32,
    message: String,
}

impl From<RegistryError> for ApiError {
    fn from(e: RegistryError) -> Self {
        let status =
            StatusCode::from_u16(e.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let error_code = e.error_code().unwrap_or(i32::from(status.as_u16()));
        Self {
            status,
            error_code,
            message: e.to_string(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if self.status.is_server_error() {
            tracing::warn!(status = self.status.as_u16(), error_code = self.error_code, message = %self.message, "registry request failed");
        } else {
            tracing::debug!(status = self.status.as_u16(), error_code = self.error_code, message = %self.message, "registry request refused");
        }
        reply(
            self.status,
            &json!({ "error_code": self.error_code, "message": self.message }),
        )
    }
}

type ApiResult = Result<Response, ApiError>;

fn reply<T: Serialize>(status: StatusCode, body: &T) -> Response {
    match serde_json::to_string(body) {
        Ok(text) => (status, [(header::CONTENT_TYPE, CONTENT_TYPE)], text).into_response(),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            [(header::CONTENT_TYPE, CONTENT_TYPE)],
            json!({ "error_code": 50001, "message": format!("could not encode response: {e}") })
                .to_string(),
        )
            .into_response(),
    }
}

fn ok<T: Serialize>(body: &T) -> ApiResult {
    Ok(reply(StatusCode::OK, body))
}

fn invalid_schema(reason: String) -> ApiError {
    ApiError {
        status: StatusCode::UNPROCESSABLE_ENTITY,
        error_code: INVALID_SCHEMA,
        message: format!("invalid schema (error code 42201): {reason}"),
    }
}

/// The body of register, lookup and compatibility requests.
#[derive(Debug, Deserialize)]
struct SchemaRequest {
    schema: String,
    #[serde(rename = "schemaType")]
    schema_type: Option<String>,
    #[serde(default)]
    references: Option<Vec<serde_json::Value>>,
}

/// Parses the body whatever its content type (clients send Confluent's media type,
/// `application/json`, or nothing) and refuses what this Avro-only registry can't honour.
fn schema_request(body: &Bytes) -> Result<String, ApiError> {
    let request: SchemaRequest = serde_json::from_slice(body).map_err(|e| {
        invalid_schema(format!(
            "the request body must be JSON like {{\"schema\": \"...\"}}: {e}"
        ))
    })?;
    if let Some(kind) = &request.schema_type
        && !kind.eq_ignore_ascii_case("AVRO")
    {
        return Err(invalid_schema(format!(
            "schemaType `{kind}` is not supported; this registry handles AVRO only"
        )));
    }
    if request.references.as_ref().is_some_and(|r| !r.is_empty()) {
        return Err(invalid_schema(
            "schema references are not supported; inline the referenced types".to_owned(),
        ));
    }
    Ok(request.schema)
}

fn version_ref(raw: &str) -> Result<VersionRef, ApiError> {
    raw.parse::<VersionRef>().map_err(ApiError::from)
}

fn schema_id(raw: &str) -> Result<i32, ApiError> {
    raw.parse::<i32>().map_err(|_| ApiError {
        status: StatusCode::NOT_FOUND,
        error_code: SCHEMA_NOT_FOUND,
        message: format!("schema id `{raw}` not found (error code 40403); ids are integers"),
    })
}

fn flag(params: &HashMap<String, String>, name: &str) -> bool {
    params
        .get(name)
        .is_some_and(|v| v.eq_ignore_ascii_case("true"))
}

async fn root() -> ApiResult {
    ok(&json!({}))
}

async fn not_found() -> ApiError {
    ApiError {
        status: StatusCode::NOT_FOUND,
        error_code: 404,
        message: "HTTP 404 Not Found: no such Schema Registry endpoint".to_owned(),
    }
}

async fn subjects(State(r): Registry) -> ApiResult {
    ok(&r.subjects()?)
}

async fn versions(State(r): Registry, Path(subject): Path<String>) -> ApiResult {
    ok(&r.versions(&subject)?)
}

async fn register(State(r): Registry, Path(subject): Path<String>, body: Bytes) -> ApiResult {
    let schema = schema_request(&body)?;
    let id = r.register(&subject, &schema)?;
    ok(&json!({ "id": id }))
}

async fn lookup(State(r): Registry, Path(subject): Path<String>, body: Bytes) -> ApiResult {
    let schema = schema_request(&body)?;
    ok(&r.lookup(&subject, &schema)?)
}

async fn delete_subject(State(r): Registry, Path(subject): Path<String>) -> ApiResult {
    ok(&r.delete_subject(&subject)?)
}

async fn version(State(r): Registry, Path((subject, v)): Path<(String, String)>) -> ApiResult {
    ok(&r.version(&subject, version_ref(&v)?)?)
}

async fn version_schema(
    State(r): Registry,
    Path((subject, v)): Path<(String, String)>,
) -> ApiResult {
    let found = r.version(&subject, version_ref(&v)?)?;
    // Confluent returns the schema document itself here, not a JSON string wrapping it.
    Ok((
        StatusCode::OK,
        [(header::CONTENT_TYPE, CONTENT_TYPE)],
        found.schema,
    )
        .into_response())
}

async fn schema_types() -> ApiResult {
    ok(&["AVRO"])
}

async fn schema_by_id(State(r): Registry, Path(id): Path<String>) -> ApiResult {
    let text = r.schema_by_id(schema_id(&id)?)?;
    ok(&json!({ "schema": &*text }))
}

async fn schema_versions(State(r): Registry, Path(id): Path<String>) -> ApiResult {
    let uses: Vec<_> = r
        .subject_versions_of_id(schema_id(&id)?)?
        .into_iter()
        .map(|(subject, version)| json!({ "subject": subject, "version": version }))
        .collect();
    ok(&uses)
}

async fn check_all(
    State(r): Registry,
    Path(subject): Path<String>,
    Query(params): Params,
    body: Bytes,
) -> ApiResult {
    compatibility_response(&r, &subject, VersionRef::Latest, &params, &body)
}

async fn check_version(
    State(r): Registry,
    Path((subject, v)): Path<(String, String)>,
    Query(params): Params,
    body: Bytes,
) -> ApiResult {
    compatibility_response(&r, &subject, version_ref(&v)?, &params, &body)
}

fn compatibility_response(
    r: &MemoryRegistry,
    subject: &str,
    version: VersionRef,
    params: &HashMap<String, String>,
    body: &Bytes,
) -> ApiResult {
    let schema = schema_request(body)?;
    let mut report = r.check_compatibility(subject, &schema, version)?;
    if !flag(params, "verbose") {
        report.messages.clear();
    }
    ok(&report)
}

#[derive(Debug, Deserialize)]
struct ConfigRequest {
    compatibility: String,
}

fn config_request(body: &Bytes) -> Result<Compatibility, ApiError> {
    let request: ConfigRequest = serde_json::from_slice(body).map_err(|e| ApiError {
        status: StatusCode::UNPROCESSABLE_ENTITY,
        error_code: super::error::INVALID_COMPATIBILITY_LEVEL,
        message: format!(
            "the request body must be JSON like {{\"compatibility\": \"BACKWARD\"}}: {e}"
        ),
    })?;
    Ok(request.compatibility.parse::<Compatibility>()?)
}

async fn global_config(State(r): Registry) -> ApiResult {
    ok(&json!({ "compatibilityLevel": r.compatibility(None)? }))
}

async fn set_global_config(State(r): Registry, body: Bytes) -> ApiResult {
    let level = config_request(&body)?;
    r.set_compatibility(None, level)?;
    ok(&json!({ "compatibility": level }))
}

/// Always falls back to the global level (Confluent's `defaultToGlobal=true`).
async fn subject_config(State(r): Registry, Path(subject): Path<String>) -> ApiResult {
    ok(&json!({ "compatibilityLevel": r.compatibility(Some(&subject))? }))
}

async fn set_subject_config(
    State(r): Registry,
    Path(subject): Path<String>,
    body: Bytes,
) -> ApiResult {
    let level = config_request(&body)?;
    r.set_compatibility(Some(&subject), level)?;
    ok(&json!({ "compatibility": level }))
}
