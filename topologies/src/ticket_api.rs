//! The HTTP API of `execution-ticket-service`, answering as the Python service it
//! replaces does (`services/execution-ticket-service/src/api/tickets.py` upstream): the
//! same paths, status codes and bodies, so that its clients do not notice the swap.
//!
//! Reads come from the topology's ticket store, on whichever instance holds each ticket
//! (this one, or the one that announced the ticket's partition, asked over HTTP). The
//! list reads every partition of the store, here and on the other instances, then
//! filters and pages: its filters (plan, intent, status) and its `total` need every
//! ticket anyway, and an index by plan would live in other tasks than the tickets (the
//! store is partitioned by ticket id), so it would answer from a different moment.
//!
//! Writes go through Kafka like every other change: `POST` produces the ticket to
//! `execution.tickets` and answers once the broker acknowledged it and the topology
//! stored it, so that a read right after sees it.
//!
//! Where the upstream service has a defect, this one does what the service means to do:
//! the list applies `intent_id` (upstream's database layer ignores it), and the 403 of
//! the token route names the status (upstream fails with a 500 building that message).

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, patch, post};
use axum::{Json, Router};
use engine::ops::{ServiceContext, ServiceError};
use engine::serde::{Serde, SerdeRole};
use serde_json::{Map, Value, json};

use crate::execution_ticket_service::{
    COMMAND_OUTCOMES_STORE, COMMANDS, CommandAction, CommandOutcome, DEAD_LETTER, TICKET_STORE,
    TICKETS, TicketCommand, apply_command, status_symbol,
};
use crate::tickets::{EXECUTION_TICKET_SCHEMA, ExecutionTicket, TicketStatus};

/// Where the routes live.
pub const API_PATH: &str = "/api/v1/tickets";

/// What the API is configured with (`[topologies.execution-ticket-service]`).
#[derive(Clone, Debug)]
pub struct ApiOptions {
    /// The HS256 secret of the tokens of `GET /api/v1/tickets/{id}/token`; without
    /// one, that route answers 503.
    pub jwt_secret_key: Option<String>,
    /// How long a token is valid.
    pub token_lifetime: Duration,
    /// How long `POST` waits for the ticket to be stored once the broker has it.
    pub write_timeout: Duration,
}

impl Default for ApiOptions {
    fn default() -> Self {
        ApiOptions {
            jwt_secret_key: None,
            token_lifetime: Duration::from_secs(3600),
            write_timeout: Duration::from_secs(10),
        }
    }
}

struct Api {
    ctx: ServiceContext,
    tickets: Arc<dyn Serde<ExecutionTicket>>,
    options: ApiOptions,
    /// The ticket schema registered for writing to `execution.tickets`, once.
    prepared: tokio::sync::OnceCell<Result<(), String>>,
}

/// The API's routes, built by the operations endpoint with its [`ServiceContext`].
pub fn routes(
    ctx: ServiceContext,
    tickets: Arc<dyn Serde<ExecutionTicket>>,
    options: ApiOptions,
) -> Router {
    let api = Arc::new(Api {
        ctx,
        tickets,
        options,
        prepared: tokio::sync::OnceCell::new(),
    });
    Router::new()
        .route(&format!("{API_PATH}/"), get(list).post(create))
        .route(API_PATH, get(list).post(create))
        .route(&format!("{API_PATH}/{{ticket_id}}"), get(get_ticket))
        .route(&format!("{API_PATH}/{{ticket_id}}/result"), get(result))
        .route(&format!("{API_PATH}/{{ticket_id}}/token"), get(token))
        .route(
            &format!("{API_PATH}/{{ticket_id}}/status"),
            patch(update_status),
        )
        .route(&format!("{API_PATH}/{{ticket_id}}/retry"), post(retry))
        .route(&format!("{API_PATH}/compensation"), post(compensation))
        .route("/openapi.json", get(openapi))
        .with_state(api)
}

/// FastAPI's error body: `{"detail": ...}`.
fn detail(code: StatusCode, detail: impl Into<Value>) -> Response {
    (code, Json(json!({ "detail": detail.into() }))).into_response()
}

fn failed(error: &ServiceError) -> Response {
    detail(error.status(), error.to_string())
}

fn not_found() -> Response {
    detail(StatusCode::NOT_FOUND, "Ticket not found")
}

/// A stored ticket as the service's `ExecutionTicket` model renders it: the contract's
/// fields, and `predictions`, which the service's responses always carry as `null`.
fn ticket_body(mut stored: Value) -> Value {
    if let Value::Object(fields) = &mut stored {
        fields.entry("predictions").or_insert(Value::Null);
    }
    stored
}

async fn get_ticket(State(api): State<Arc<Api>>, Path(ticket_id): Path<String>) -> Response {
    match api.ctx.get(TICKET_STORE, &ticket_id).await {
        Ok(Some(ticket)) => Json(ticket_body(ticket)).into_response(),
        Ok(None) => not_found(),
        Err(e) => failed(&e),
    }
}

/// `metadata["result"]`, decoded when it is a JSON text (the contract's metadata holds
/// strings only), else as it is.
fn decoded_result(ticket: &Value) -> Value {
    match &ticket["metadata"]["result"] {
        Value::String(text) => {
            serde_json::from_str(text).unwrap_or_else(|_| Value::String(text.clone()))
        }
        other => other.clone(),
    }
}

async fn result(State(api): State<Arc<Api>>, Path(ticket_id): Path<String>) -> Response {
    match api.ctx.get(TICKET_STORE, &ticket_id).await {
        Ok(Some(ticket)) => Json(json!({
            "ticket_id": ticket_id,
            "status": ticket["status"].as_str().unwrap_or("UNKNOWN"),
            "result": decoded_result(&ticket),
        }))
        .into_response(),
        Ok(None) => not_found(),
        Err(e) => failed(&e),
    }
}

fn now() -> Duration {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
}

fn base64url(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// An HS256 JSON Web Token of `claims`.
pub fn hs256_token(claims: &Value, secret: &[u8]) -> String {
    use hmac::Mac as _;
    let signing_input = format!(
        "{}.{}",
        base64url(json!({"alg": "HS256", "typ": "JWT"}).to_string().as_bytes()),
        base64url(claims.to_string().as_bytes())
    );
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret)
        .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
    mac.update(signing_input.as_bytes());
    let signature = mac.finalize().into_bytes();
    format!("{signing_input}.{}", base64url(&signature))
}

async fn token(State(api): State<Arc<Api>>, Path(ticket_id): Path<String>) -> Response {
    let ticket = match api.ctx.get(TICKET_STORE, &ticket_id).await {
        Ok(Some(ticket)) => ticket,
        Ok(None) => return not_found(),
        Err(e) => return failed(&e),
    };
    let status = ticket["status"].as_str().unwrap_or("UNKNOWN");
    if !matches!(status, "PENDING" | "RUNNING") {
        return detail(
            StatusCode::FORBIDDEN,
            format!("Cannot generate token for ticket with status {status}"),
        );
    }
    let Some(secret) = &api.options.jwt_secret_key else {
        return detail(
            StatusCode::SERVICE_UNAVAILABLE,
            "Tokens are not configured: set jwt_secret_key in [topologies.execution-ticket-service]",
        );
    };
    let task_type = ticket["task_type"].as_str().unwrap_or_default();
    let security_level = ticket["security_level"].as_str().unwrap_or_default();
    let mut scopes = vec![
        "ticket:read".to_string(),
        "ticket:update".to_string(),
        format!("task:{}", task_type.to_lowercase()),
    ];
    if matches!(security_level, "CONFIDENTIAL" | "RESTRICTED") {
        scopes.push("security:elevated".into());
    }
    let issued = now().as_secs();
    let lifetime = api.options.token_lifetime.as_secs();
    let expires = issued + lifetime;
    let claims = json!({
        "sub": ticket_id,
        "iss": "neural-hive-mind",
        "aud": "worker-agents",
        "exp": expires,
        "iat": issued,
        "jti": uuid::Uuid::new_v4().to_string(),
        "ticket_id": ticket_id,
        "plan_id": ticket["plan_id"],
        "intent_id": ticket["intent_id"],
        "task_type": task_type,
        "security_level": security_level,
        "required_capabilities": ticket["required_capabilities"],
        "scopes": scopes,
    });
    Json(json!({
        "access_token": hs256_token(&claims, secret.as_bytes()),
        "token_type": "Bearer",
        "expires_in": lifetime,
        "expires_at": expires,
        "ticket_id": ticket_id,
        "scopes": scopes,
    }))
    .into_response()
}

const STATUSES: [&str; 6] = [
    "PENDING",
    "RUNNING",
    "COMPLETED",
    "FAILED",
    "COMPENSATING",
    "COMPENSATED",
];

/// One entry of FastAPI's 422 body for a query parameter.
fn query_error(kind: &str, name: &str, message: String, input: &str, ctx: Option<Value>) -> Value {
    let mut error = json!({
        "type": kind,
        "loc": ["query", name],
        "msg": message,
        "input": input,
    });
    if let Some(ctx) = ctx {
        error["ctx"] = ctx;
    }
    error
}

/// An integer query parameter within `min..=max`, or FastAPI's error for it.
fn bounded(name: &str, text: &str, min: i64, max: Option<i64>) -> Result<i64, Value> {
    let Ok(n) = text.trim().parse::<i64>() else {
        return Err(query_error(
            "int_parsing",
            name,
            "Input should be a valid integer, unable to parse string as an integer".into(),
            text,
            None,
        ));
    };
    if n < min {
        return Err(query_error(
            "greater_than_equal",
            name,
            format!("Input should be greater than or equal to {min}"),
            text,
            Some(json!({ "ge": min })),
        ));
    }
    if let Some(max) = max
        && n > max
    {
        return Err(query_error(
            "less_than_equal",
            name,
            format!("Input should be less than or equal to {max}"),
            text,
            Some(json!({ "le": max })),
        ));
    }
    Ok(n)
}

async fn list(
    State(api): State<Arc<Api>>,
    Query(params): Query<Vec<(String, String)>>,
) -> Response {
    let (mut plan_id, mut intent_id, mut status) = (None, None, None);
    let (mut offset, mut limit) = (0_i64, 100_i64);
    let mut errors = Vec::new();
    // FastAPI takes the last value of a repeated parameter.
    for (name, value) in &params {
        match name.as_str() {
            "plan_id" => plan_id = Some(value.clone()),
            "intent_id" => intent_id = Some(value.clone()),
            "status" => {
                if STATUSES.contains(&value.as_str()) {
                    status = Some(value.clone());
                } else {
                    let expected = "'PENDING', 'RUNNING', 'COMPLETED', 'FAILED', 'COMPENSATING' or 'COMPENSATED'";
                    errors.push(query_error(
                        "enum",
                        "status",
                        format!("Input should be {expected}"),
                        value,
                        Some(json!({ "expected": expected })),
                    ));
                }
            }
            "offset" => match bounded("offset", value, 0, None) {
                Ok(n) => offset = n,
                Err(e) => errors.push(e),
            },
            "limit" => match bounded("limit", value, 1, Some(1000)) {
                Ok(n) => limit = n,
                Err(e) => errors.push(e),
            },
            _ => {}
        }
    }
    if !errors.is_empty() {
        return detail(StatusCode::UNPROCESSABLE_ENTITY, errors);
    }
    // Empty filters are no filters, as in the service (`if plan_id:`).
    let wanted = |field: &Value, filter: &Option<String>| {
        filter
            .as_deref()
            .is_none_or(|f| f.is_empty() || field.as_str() == Some(f))
    };
    let mut tickets: Vec<Value> = match api.ctx.entries(TICKET_STORE).await {
        Ok(entries) => entries
            .into_iter()
            .map(|(_, ticket)| ticket)
            .filter(|t| {
                wanted(&t["plan_id"], &plan_id)
                    && wanted(&t["intent_id"], &intent_id)
                    && wanted(&t["status"], &status)
            })
            .collect(),
        Err(e) => return failed(&e),
    };
    // Newest first, as the service's `ORDER BY created_at DESC`; ties in id order.
    tickets.sort_by(|a, b| {
        b["created_at"]
            .as_i64()
            .cmp(&a["created_at"].as_i64())
            .then_with(|| a["ticket_id"].as_str().cmp(&b["ticket_id"].as_str()))
    });
    let total = tickets.len();
    let page: Vec<Value> = tickets
        .into_iter()
        .skip(usize::try_from(offset).unwrap_or(usize::MAX))
        .take(usize::try_from(limit).unwrap_or(usize::MAX))
        .map(ticket_body)
        .collect();
    Json(json!({"tickets": page, "total": total, "offset": offset, "limit": limit})).into_response()
}

/// `json.dumps` as Python writes it by default (`", "` and `": "` between items,
/// non-ASCII escaped): how the service's model turns a non-string metadata value into
/// the string the contract's metadata holds.
pub fn python_json_dumps(value: &Value) -> String {
    fn write(value: &Value, out: &mut String) {
        match value {
            Value::String(s) => {
                out.push('"');
                for c in s.chars() {
                    match c {
                        '"' => out.push_str("\\\""),
                        '\\' => out.push_str("\\\\"),
                        '\n' => out.push_str("\\n"),
                        '\r' => out.push_str("\\r"),
                        '\t' => out.push_str("\\t"),
                        '\u{8}' => out.push_str("\\b"),
                        '\u{c}' => out.push_str("\\f"),
                        c if c.is_ascii() && !c.is_ascii_control() => out.push(c),
                        c => {
                            let mut units = [0_u16; 2];
                            for unit in c.encode_utf16(&mut units) {
                                out.push_str(&format!("\\u{unit:04x}"));
                            }
                        }
                    }
                }
                out.push('"');
            }
            Value::Array(items) => {
                out.push('[');
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        out.push_str(", ");
                    }
                    write(item, out);
                }
                out.push(']');
            }
            Value::Object(fields) => {
                out.push('{');
                for (i, (k, v)) in fields.iter().enumerate() {
                    if i > 0 {
                        out.push_str(", ");
                    }
                    write(&Value::String(k.clone()), out);
                    out.push_str(": ");
                    write(v, out);
                }
                out.push('}');
            }
            Value::Bool(true) => out.push_str("true"),
            Value::Bool(false) => out.push_str("false"),
            Value::Null => out.push_str("null"),
            Value::Number(n) => out.push_str(&n.to_string()),
        }
    }
    let mut out = String::new();
    write(value, &mut out);
    out
}

/// The body of `POST` with the service's defaults filled in and its coercions applied,
/// then checked against the contract: the ticket, or the `detail` of the 422 naming the
/// field.
pub fn ticket_from_request(body: &[u8], now_ms: i64) -> Result<ExecutionTicket, Value> {
    let invalid = |message: String| Value::String(format!("Validation error: {message}"));
    let data: Value = serde_json::from_slice(body).map_err(|e| {
        json!([{"type": "json_invalid", "loc": ["body", e.column()], "msg": "JSON decode error", "input": {}, "ctx": {"error": e.to_string()}}])
    })?;
    let Value::Object(mut fields) = data else {
        return Err(
            json!([{"type": "dict_type", "loc": ["body"], "msg": "Input should be a valid dictionary", "input": data}]),
        );
    };
    if fields
        .get("ticket_id")
        .is_none_or(|id| id.is_null() || id.as_str() == Some(""))
    {
        fields.insert("ticket_id".into(), uuid::Uuid::new_v4().to_string().into());
    }
    fields.entry("created_at").or_insert(now_ms.into());
    fields.entry("status").or_insert("PENDING".into());
    fields.entry("dependencies").or_insert(json!([]));
    fields.entry("retry_count").or_insert(0.into());
    fields
        .entry("compensation_ticket_id")
        .or_insert(Value::Null);
    fields.entry("metadata").or_insert(json!({}));
    fields.entry("schema_version").or_insert(1.into());
    fields.entry("parameters").or_insert(json!({}));
    fields.entry("required_capabilities").or_insert(json!([]));
    // The model's `metadata` validator: a non-object becomes `{}`, values become strings.
    let metadata = match fields.remove("metadata") {
        Some(Value::Object(m)) => m
            .into_iter()
            .map(|(k, v)| {
                let text = match v {
                    Value::String(s) => s,
                    Value::Null => String::new(),
                    other => python_json_dumps(&other),
                };
                (k, Value::String(text))
            })
            .collect::<Map<String, Value>>(),
        _ => Map::new(),
    };
    fields.insert("metadata".into(), Value::Object(metadata));
    // The model's `priority` validator: numbers by range, strings in any case.
    if let Some(priority) = fields.get_mut("priority") {
        if let Some(n) = priority.as_i64() {
            *priority = match n {
                1..=2 => "LOW",
                3..=5 => "NORMAL",
                6..=8 => "HIGH",
                _ => "CRITICAL",
            }
            .into();
        } else if let Some(s) = priority.as_str() {
            *priority = s.to_uppercase().into();
        }
    }
    let ticket: ExecutionTicket =
        serde_path_to_error::deserialize(Value::Object(fields)).map_err(|e| {
            // As pydantic says it: the missing field's own path, "Field required".
            let (mut path, mut message) = (e.path().to_string(), e.inner().to_string());
            if let Some(field) = message
                .strip_prefix("missing field `")
                .and_then(|m| m.strip_suffix('`'))
            {
                path = if path == "." {
                    field.to_string()
                } else {
                    format!("{path}.{field}")
                };
                message = "Field required".into();
            }
            invalid(format!(
                "1 validation error for ExecutionTicket\n{path}\n  {message}"
            ))
        })?;
    if ticket.dependencies.contains(&ticket.ticket_id) {
        return Err(invalid(
            "1 validation error for ExecutionTicket\ndependencies\n  Value error, Ticket não pode depender de si mesmo".into(),
        ));
    }
    if let (Some(started), Some(completed)) = (ticket.started_at, ticket.completed_at)
        && completed <= started
    {
        return Err(invalid(
            "1 validation error for ExecutionTicket\ncompleted_at\n  Value error, completed_at deve ser maior que started_at".into(),
        ));
    }
    Ok(ticket)
}

async fn create(State(api): State<Arc<Api>>, body: Bytes) -> Response {
    let ticket = match ticket_from_request(&body, now_ms()) {
        Ok(ticket) => ticket,
        Err(refused) => return detail(StatusCode::UNPROCESSABLE_ENTITY, refused),
    };
    match publish(&api, &ticket).await {
        Ok(stored) => (StatusCode::CREATED, Json(ticket_body(stored))).into_response(),
        Err(e) => e.answer("Failed to create ticket"),
    }
}

fn now_ms() -> i64 {
    i64::try_from(now().as_millis()).unwrap_or(i64::MAX)
}

/// Why a write did not come through.
enum WriteError {
    /// Not sent (the registry, the serde, the broker): the route's 500.
    NotSent(String),
    /// Sent, but not applied in time, or the store not readable: answered as it is.
    Answered(Response),
}

impl WriteError {
    /// The answer: a 500 with `context` for what was not sent.
    fn answer(self, context: &str) -> Response {
        match self {
            WriteError::NotSent(e) => {
                detail(StatusCode::INTERNAL_SERVER_ERROR, format!("{context}: {e}"))
            }
            WriteError::Answered(response) => response,
        }
    }
}

/// Produces `ticket` to `execution.tickets` (keyed by its id) and waits until the
/// topology stored it, so that a read right after sees it: the stored ticket.
async fn publish(api: &Api, ticket: &ExecutionTicket) -> Result<Value, WriteError> {
    let serde = api.tickets.clone();
    let prepared = api
        .prepared
        .get_or_init(|| async move {
            tokio::task::spawn_blocking(move || {
                serde
                    .prepare(TICKETS, SerdeRole::Write)
                    .map_err(|e| e.to_string())
            })
            .await
            .unwrap_or_else(|e| Err(e.to_string()))
        })
        .await;
    if let Err(e) = prepared {
        return Err(WriteError::NotSent(e.clone()));
    }
    let mut bytes = Vec::new();
    api.tickets
        .serialize(TICKETS, ticket, &mut bytes)
        .map_err(|e| WriteError::NotSent(e.to_string()))?;
    let id = &ticket.ticket_id;
    api.ctx
        .send(TICKETS, Some(id.as_bytes()), &bytes)
        .await
        .map_err(|e| WriteError::NotSent(e.to_string()))?;
    let not_stored = || {
        format!(
            "Ticket {id} was written to {TICKETS} but not stored within {} ms: it may have been refused (a duplicate, or a second ticket for its plan's task; see {DEAD_LETTER})",
            api.options.write_timeout.as_millis()
        )
    };
    wait_for(api, TICKET_STORE, id, not_stored, |stored| {
        Some(stored.clone())
    })
    .await
}

/// Reads `key` of `store` until `found` finds what it waits for in the value, within the
/// write timeout; else a 504 saying `late`.
async fn wait_for<T>(
    api: &Api,
    store: &str,
    key: &str,
    late: impl Fn() -> String,
    found: impl Fn(&Value) -> Option<T>,
) -> Result<T, WriteError> {
    let deadline = tokio::time::Instant::now() + api.options.write_timeout;
    loop {
        match api.ctx.get(store, key).await {
            Ok(Some(value)) => {
                if let Some(done) = found(&value) {
                    return Ok(done);
                }
            }
            Ok(None) | Err(ServiceError::Unavailable(_)) => {}
            Err(e) => return Err(WriteError::Answered(failed(&e))),
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(WriteError::Answered(detail(
                StatusCode::GATEWAY_TIMEOUT,
                late(),
            )));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Produces `action` on `ticket_id` to the commands topic and waits for the topology to
/// apply it: the resulting ticket, or the service's refusal.
async fn command(
    api: &Api,
    ticket_id: &str,
    action: CommandAction,
) -> Result<ExecutionTicket, WriteError> {
    let command = TicketCommand {
        command_id: uuid::Uuid::new_v4().to_string(),
        ticket_id: ticket_id.to_string(),
        action,
    };
    let bytes = serde_json::to_vec(&command).map_err(|e| WriteError::NotSent(e.to_string()))?;
    api.ctx
        .send(COMMANDS, Some(ticket_id.as_bytes()), &bytes)
        .await
        .map_err(|e| WriteError::NotSent(e.to_string()))?;
    let late = || {
        format!(
            "The change to ticket {ticket_id} was written to {COMMANDS} but not applied within {} ms",
            api.options.write_timeout.as_millis()
        )
    };
    let outcome = wait_for(api, COMMAND_OUTCOMES_STORE, ticket_id, late, |outcomes| {
        serde_json::from_value::<Vec<CommandOutcome>>(outcomes.clone())
            .ok()?
            .into_iter()
            .find(|o| o.command_id == command.command_id)
    })
    .await?;
    outcome.outcome.map_err(|refusal| {
        WriteError::Answered(detail(
            StatusCode::from_u16(refusal.status).unwrap_or(StatusCode::BAD_REQUEST),
            refusal.detail,
        ))
    })
}

/// One entry of FastAPI's 422 body for the request body.
fn body_error(kind: &str, field: Option<&str>, message: &str, input: &Value) -> Value {
    let loc = match field {
        Some(field) => json!(["body", field]),
        None => json!(["body"]),
    };
    json!({"type": kind, "loc": loc, "msg": message, "input": input})
}

/// The JSON object of a request body, or the `detail` of FastAPI's 422.
fn body_object(body: &[u8]) -> Result<Map<String, Value>, Value> {
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(fields)) => Ok(fields),
        Ok(other) => Err(json!([body_error(
            "model_attributes_type",
            None,
            "Input should be a valid dictionary or object to extract fields from",
            &other
        )])),
        Err(e) => Err(
            json!([{"type": "json_invalid", "loc": ["body", e.column()], "msg": "JSON decode error", "input": {}, "ctx": {"error": e.to_string()}}]),
        ),
    }
}

/// A string field of a request body: required, or optional (`null` allowed).
fn string_field(
    fields: &Map<String, Value>,
    name: &str,
    required: bool,
    errors: &mut Vec<Value>,
) -> Option<String> {
    match fields.get(name) {
        None if required => {
            errors.push(body_error(
                "missing",
                Some(name),
                "Field required",
                &Value::Object(fields.clone()),
            ));
            None
        }
        None => None,
        Some(Value::Null) if !required => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(other) => {
            errors.push(body_error(
                "string_type",
                Some(name),
                "Input should be a valid string",
                other,
            ));
            None
        }
    }
}

async fn update_status(
    State(api): State<Arc<Api>>,
    Path(ticket_id): Path<String>,
    body: Bytes,
) -> Response {
    let fields = match body_object(&body) {
        Ok(fields) => fields,
        Err(refused) => return detail(StatusCode::UNPROCESSABLE_ENTITY, refused),
    };
    let mut errors = Vec::new();
    let status = match fields.get("status") {
        None => {
            errors.push(body_error(
                "missing",
                Some("status"),
                "Field required",
                &Value::Object(fields.clone()),
            ));
            None
        }
        Some(value) => match serde_json::from_value::<TicketStatus>(value.clone()) {
            Ok(status) => Some(status),
            Err(_) => {
                let expected =
                    "'PENDING', 'RUNNING', 'COMPLETED', 'FAILED', 'COMPENSATING' or 'COMPENSATED'";
                let mut error = body_error(
                    "enum",
                    Some("status"),
                    &format!("Input should be {expected}"),
                    value,
                );
                error["ctx"] = json!({"expected": expected});
                errors.push(error);
                None
            }
        },
    };
    let error_message = string_field(&fields, "error_message", false, &mut errors);
    let actual_duration_ms = match fields.get("actual_duration_ms") {
        None | Some(Value::Null) => None,
        Some(value) => match value.as_i64() {
            Some(n) => Some(n),
            None => {
                errors.push(body_error(
                    "int_type",
                    Some("actual_duration_ms"),
                    "Input should be a valid integer",
                    value,
                ));
                None
            }
        },
    };
    let result = match fields.get("result_data") {
        None | Some(Value::Null) => None,
        Some(value @ Value::Object(_)) => Some(python_json_dumps(value)),
        Some(value) => {
            errors.push(body_error(
                "dict_type",
                Some("result_data"),
                "Input should be a valid dictionary",
                value,
            ));
            None
        }
    };
    let Some(status) = status.filter(|_| errors.is_empty()) else {
        return detail(StatusCode::UNPROCESSABLE_ENTITY, errors);
    };
    match api.ctx.get(TICKET_STORE, &ticket_id).await {
        Ok(Some(_)) => {}
        Ok(None) => return not_found(),
        Err(e) => return failed(&e),
    }
    let action = CommandAction::UpdateStatus {
        status,
        error_message,
        actual_duration_ms,
        result,
    };
    match command(&api, &ticket_id, action).await {
        Ok(ticket) => Json(ticket_json(&ticket)).into_response(),
        Err(e) => e.answer("Failed to update ticket"),
    }
}

/// A ticket as the routes answer with it.
fn ticket_json(ticket: &ExecutionTicket) -> Value {
    ticket_body(serde_json::to_value(ticket).unwrap_or(Value::Null))
}

/// A stored ticket, or the answer the route gives when it is not there.
async fn stored_ticket(
    api: &Api,
    ticket_id: &str,
    missing: String,
) -> Result<ExecutionTicket, Response> {
    match api.ctx.get(TICKET_STORE, ticket_id).await {
        Ok(Some(value)) => serde_json::from_value(value)
            .map_err(|e| detail(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())),
        Ok(None) => Err(detail(StatusCode::NOT_FOUND, missing)),
        Err(e) => Err(failed(&e)),
    }
}

async fn retry(State(api): State<Arc<Api>>, Path(ticket_id): Path<String>) -> Response {
    // Checked here to answer at once, and again where the command is applied.
    let mut ticket = match stored_ticket(
        &api,
        &ticket_id,
        format!("Ticket não encontrado: {ticket_id}"),
    )
    .await
    {
        Ok(ticket) => ticket,
        Err(answer) => return answer,
    };
    if let Err(refusal) = apply_command(&mut ticket, &CommandAction::Retry) {
        return detail(StatusCode::BAD_REQUEST, refusal.detail);
    }
    match command(&api, &ticket_id, CommandAction::Retry).await {
        Ok(ticket) => Json(ticket_json(&ticket)).into_response(),
        Err(e) => e.answer("Falha ao agendar retry do ticket"),
    }
}

async fn compensation(State(api): State<Arc<Api>>, body: Bytes) -> Response {
    let fields = match body_object(&body) {
        Ok(fields) => fields,
        Err(refused) => return detail(StatusCode::UNPROCESSABLE_ENTITY, refused),
    };
    let mut errors = Vec::new();
    let original_id = string_field(&fields, "original_ticket_id", true, &mut errors);
    let reason = string_field(&fields, "reason", true, &mut errors);
    let action = string_field(&fields, "compensation_action", true, &mut errors);
    let parameters = match fields.get("parameters") {
        None => Map::new(),
        Some(Value::Object(p)) => p.clone(),
        Some(other) => {
            errors.push(body_error(
                "dict_type",
                Some("parameters"),
                "Input should be a valid dictionary",
                other,
            ));
            Map::new()
        }
    };
    let (Some(original_id), Some(reason), Some(action), true) =
        (original_id, reason, action, errors.is_empty())
    else {
        return detail(StatusCode::UNPROCESSABLE_ENTITY, errors);
    };
    let compensation_ticket_id = uuid::Uuid::new_v4().to_string();
    let mut original = match stored_ticket(
        &api,
        &original_id,
        format!("Ticket original nao encontrado: {original_id}"),
    )
    .await
    {
        Ok(ticket) => ticket,
        Err(answer) => return answer,
    };
    let original_status = status_symbol(original.status);
    let compensate = CommandAction::Compensate {
        compensation_ticket_id: compensation_ticket_id.clone(),
    };
    if let Err(refusal) = apply_command(&mut original, &compensate) {
        return detail(StatusCode::BAD_REQUEST, refusal.detail);
    }
    // The original first: a compensation ticket exists only for a ticket that moved to
    // COMPENSATING.
    let original = match command(&api, &original_id, compensate).await {
        Ok(ticket) => ticket,
        Err(e) => return e.answer("Falha ao criar ticket de compensacao"),
    };
    let ticket = compensation_ticket(
        &original,
        &original_status,
        &compensation_ticket_id,
        &action,
        &reason,
        &parameters,
        now_ms(),
    );
    if let Err(e) = publish(&api, &ticket).await {
        return e.answer("Falha ao criar ticket de compensacao");
    }
    Json(json!({
        "ticket_id": compensation_ticket_id,
        "original_ticket_id": original_id,
        "status": "PENDING",
        "action": action,
        "reason": reason,
    }))
    .into_response()
}

/// The ticket that undoes `original`, as the service builds it: task
/// `compensate-<first 8 characters of the original id>`, two minutes, the action, the
/// reason and the caller's parameters among its parameters. What the service leaves out
/// and the contract requires comes from the original (decision, QoS, security level,
/// retries); the description names the action.
pub fn compensation_ticket(
    original: &ExecutionTicket,
    original_status: &str,
    ticket_id: &str,
    action: &str,
    reason: &str,
    parameters: &Map<String, Value>,
    now_ms: i64,
) -> ExecutionTicket {
    let task_type = serde_json::to_value(original.task_type)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default();
    let mut params: std::collections::HashMap<String, String> = [
        ("action", action),
        ("reason", reason),
        ("original_ticket_id", original.ticket_id.as_str()),
        ("original_task_type", task_type.as_str()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    for (k, v) in parameters {
        let text = match v {
            Value::String(s) => s.clone(),
            other => python_json_dumps(other),
        };
        params.insert(k.clone(), text);
    }
    let prefix: String = original.ticket_id.chars().take(8).collect();
    ExecutionTicket {
        ticket_id: ticket_id.to_string(),
        plan_id: original.plan_id.clone(),
        intent_id: original.intent_id.clone(),
        decision_id: original.decision_id.clone(),
        correlation_id: original.correlation_id.clone(),
        trace_id: original.trace_id.clone(),
        span_id: None,
        task_id: format!("compensate-{prefix}"),
        task_type: crate::tickets::TaskType::Compensate,
        description: format!("Compensate ticket {}: {action}", original.ticket_id),
        dependencies: Vec::new(),
        status: TicketStatus::Pending,
        priority: original.priority,
        risk_band: original.risk_band,
        sla: crate::tickets::Sla {
            deadline: now_ms + 120_000,
            timeout_ms: 120_000,
            max_retries: original.sla.max_retries,
        },
        qos: original.qos.clone(),
        parameters: params,
        required_capabilities: original.required_capabilities.clone(),
        security_level: original.security_level,
        created_at: now_ms,
        started_at: None,
        completed_at: None,
        estimated_duration_ms: None,
        actual_duration_ms: None,
        retry_count: 0,
        error_message: None,
        compensation_ticket_id: None,
        metadata: [
            ("compensation_reason", reason),
            ("original_task_type", task_type.as_str()),
            ("original_status", original_status),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect(),
        schema_version: 1,
    }
}

/// The JSON Schema of an Avro type of the ticket contract.
fn json_schema(avro: &Value) -> Value {
    match avro {
        Value::String(t) => match t.as_str() {
            "string" => json!({"type": "string"}),
            "int" | "long" => json!({"type": "integer"}),
            "boolean" => json!({"type": "boolean"}),
            "float" | "double" => json!({"type": "number"}),
            "null" => json!({"type": "null"}),
            _ => json!({}),
        },
        Value::Array(branches) => {
            json!({"anyOf": branches.iter().map(json_schema).collect::<Vec<_>>()})
        }
        Value::Object(o) => match o.get("type").and_then(Value::as_str) {
            Some("enum") => json!({"type": "string", "enum": o["symbols"]}),
            Some("array") => json!({"type": "array", "items": json_schema(&o["items"])}),
            Some("map") => {
                json!({"type": "object", "additionalProperties": json_schema(&o["values"])})
            }
            Some("record") => {
                let fields = o["fields"].as_array().cloned().unwrap_or_default();
                let properties: Map<String, Value> = fields
                    .iter()
                    .map(|f| {
                        let mut schema = json_schema(&f["type"]);
                        if let Some(doc) = f.get("doc") {
                            schema["description"] = doc.clone();
                        }
                        (f["name"].as_str().unwrap_or_default().to_string(), schema)
                    })
                    .collect();
                let required: Vec<&Value> = fields
                    .iter()
                    .filter(|f| f.get("default").is_none())
                    .map(|f| &f["name"])
                    .collect();
                json!({"type": "object", "properties": properties, "required": required})
            }
            _ => json_schema(&o["type"]),
        },
        _ => json!({}),
    }
}

/// The OpenAPI document of these routes, with the ticket's schema from its contract.
pub fn openapi_document() -> Value {
    let contract: Value = serde_json::from_str(EXECUTION_TICKET_SCHEMA).unwrap_or(Value::Null);
    let mut ticket = json_schema(&contract);
    ticket["properties"]["predictions"] = json!({"anyOf": [{"type": "object"}, {"type": "null"}]});
    let error = || json!({"$ref": "#/components/schemas/HTTPError"});
    let answer = |description: &str, schema: Value| json!({"description": description, "content": {"application/json": {"schema": schema}}});
    let ticket_ref = || json!({"$ref": "#/components/schemas/ExecutionTicket"});
    let id_parameter = || json!({"name": "ticket_id", "in": "path", "required": true, "schema": {"type": "string"}});
    let query = |name: &str, schema: Value| json!({"name": name, "in": "query", "required": false, "schema": schema});
    json!({
        "openapi": "3.1.0",
        "info": {"title": "execution-ticket-service", "version": env!("CARGO_PKG_VERSION")},
        "paths": {
            format!("{API_PATH}/"): {
                "get": {
                    "summary": "Lista tickets com filtros.",
                    "operationId": "list_tickets",
                    "parameters": [
                        query("plan_id", json!({"type": "string"})),
                        query("intent_id", json!({"type": "string"})),
                        query("status", json!({"type": "string", "enum": STATUSES})),
                        query("offset", json!({"type": "integer", "minimum": 0, "default": 0})),
                        query("limit", json!({"type": "integer", "minimum": 1, "maximum": 1000, "default": 100})),
                    ],
                    "responses": {
                        "200": answer("Newest first", json!({"type": "object", "properties": {
                            "tickets": {"type": "array", "items": ticket_ref()},
                            "total": {"type": "integer"},
                            "offset": {"type": "integer"},
                            "limit": {"type": "integer"},
                        }})),
                        "422": answer("A query parameter out of range", error()),
                        "503": answer("A partition between instances; retry", error()),
                    }
                },
                "post": {
                    "summary": "Cria novo execution ticket via HTTP REST.",
                    "operationId": "create_ticket",
                    "requestBody": {"required": true, "content": {"application/json": {"schema": {"type": "object"}}}},
                    "responses": {
                        "201": answer("Stored: a read right after sees it", ticket_ref()),
                        "422": answer("Validation error naming the field", error()),
                        "500": answer("The broker did not take the ticket", error()),
                        "504": answer("Written to Kafka but not stored in time", error()),
                    }
                }
            },
            format!("{API_PATH}/{{ticket_id}}"): {
                "get": {
                    "summary": "Busca ticket por ID.",
                    "operationId": "get_ticket",
                    "parameters": [id_parameter()],
                    "responses": {
                        "200": answer("The ticket", ticket_ref()),
                        "404": answer("Ticket not found", error()),
                        "503": answer("Its partition is restoring or between instances; retry", error()),
                    }
                }
            },
            format!("{API_PATH}/{{ticket_id}}/result"): {
                "get": {
                    "summary": "Retorna o output da execução do ticket como OBJETO JSON.",
                    "operationId": "get_ticket_result",
                    "parameters": [id_parameter()],
                    "responses": {
                        "200": answer("metadata.result, decoded", json!({"type": "object", "properties": {
                            "ticket_id": {"type": "string"},
                            "status": {"type": "string"},
                            "result": {},
                        }})),
                        "404": answer("Ticket not found", error()),
                    }
                }
            },
            format!("{API_PATH}/{{ticket_id}}/status"): {
                "patch": {
                    "summary": "Atualiza status do ticket.",
                    "operationId": "update_ticket_status",
                    "parameters": [id_parameter()],
                    "requestBody": {"required": true, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/StatusUpdateRequest"}}}},
                    "responses": {
                        "200": answer("The ticket once the change is applied", ticket_ref()),
                        "404": answer("Ticket not found", error()),
                        "422": answer("A field of the body", error()),
                        "504": answer("Written to Kafka but not applied in time", error()),
                    }
                }
            },
            format!("{API_PATH}/{{ticket_id}}/retry"): {
                "post": {
                    "summary": "Retry manual de ticket falhado.",
                    "operationId": "retry_ticket",
                    "parameters": [id_parameter()],
                    "responses": {
                        "200": answer("PENDING again, retry_count + 1", ticket_ref()),
                        "400": answer("Not FAILED, or sla.max_retries used", error()),
                        "404": answer("Ticket não encontrado", error()),
                        "504": answer("Written to Kafka but not applied in time", error()),
                    }
                }
            },
            format!("{API_PATH}/compensation"): {
                "post": {
                    "summary": "Cria ticket de compensacao para reverter operacao falhada.",
                    "operationId": "create_compensation_ticket",
                    "requestBody": {"required": true, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/CompensationTicketRequest"}}}},
                    "responses": {
                        "200": answer("The compensation ticket, stored; the original COMPENSATING", json!({"type": "object", "properties": {
                            "ticket_id": {"type": "string"},
                            "original_ticket_id": {"type": "string"},
                            "status": {"type": "string"},
                            "action": {"type": "string"},
                            "reason": {"type": "string"},
                        }})),
                        "400": answer("The original is neither FAILED nor RUNNING", error()),
                        "404": answer("Ticket original nao encontrado", error()),
                        "422": answer("A field of the body", error()),
                    }
                }
            },
            format!("{API_PATH}/{{ticket_id}}/token"): {
                "get": {
                    "summary": "Gera token JWT escopado para o ticket.",
                    "operationId": "get_ticket_token",
                    "parameters": [id_parameter()],
                    "responses": {
                        "200": answer("An HS256 token", json!({"type": "object", "properties": {
                            "access_token": {"type": "string"},
                            "token_type": {"type": "string"},
                            "expires_in": {"type": "integer"},
                            "expires_at": {"type": "integer"},
                            "ticket_id": {"type": "string"},
                            "scopes": {"type": "array", "items": {"type": "string"}},
                        }})),
                        "403": answer("The ticket is neither PENDING nor RUNNING", error()),
                        "404": answer("Ticket not found", error()),
                        "503": answer("No jwt_secret_key configured", error()),
                    }
                }
            }
        },
        "components": {"schemas": {
            "StatusUpdateRequest": {"type": "object", "required": ["status"], "properties": {
                "status": {"type": "string", "enum": STATUSES},
                "error_message": {"anyOf": [{"type": "string"}, {"type": "null"}]},
                "actual_duration_ms": {"anyOf": [{"type": "integer"}, {"type": "null"}]},
                "result_data": {"anyOf": [{"type": "object"}, {"type": "null"}]},
            }},
            "CompensationTicketRequest": {"type": "object",
                "required": ["original_ticket_id", "reason", "compensation_action"], "properties": {
                "original_ticket_id": {"type": "string"},
                "reason": {"type": "string"},
                "compensation_action": {"type": "string"},
                "parameters": {"type": "object", "default": {}},
            }},
            "ExecutionTicket": ticket,
            "HTTPError": {"type": "object", "properties": {"detail": {}}},
        }}
    })
}

async fn openapi() -> Response {
    Json(openapi_document()).into_response()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn refusal(body: &Value) -> String {
        let refused = ticket_from_request(body.to_string().as_bytes(), 5).unwrap_err();
        refused.as_str().unwrap().to_string()
    }

    fn request() -> Value {
        json!({
            "plan_id": "p", "intent_id": "i", "decision_id": "d", "task_id": "t",
            "task_type": "BUILD", "description": "x", "priority": 7, "risk_band": "low",
            "sla": {"deadline": 1, "timeout_ms": 2, "max_retries": 3},
            "qos": {"delivery_mode": "AT_LEAST_ONCE", "consistency": "STRONG", "durability": "TRANSIENT"},
            "security_level": "PUBLIC",
            "metadata": {"n": 5, "none": null, "nested": {"b": [1, "é"]}},
        })
    }

    #[test]
    fn a_created_ticket_gets_the_services_defaults_and_coercions() {
        let ticket = ticket_from_request(request().to_string().as_bytes(), 5).unwrap();
        assert!(uuid::Uuid::parse_str(&ticket.ticket_id).is_ok());
        assert_eq!(ticket.created_at, 5);
        assert_eq!(ticket.status, crate::tickets::TicketStatus::Pending);
        assert_eq!(ticket.priority, crate::tickets::Priority::High, "7 is HIGH");
        assert_eq!((ticket.retry_count, ticket.schema_version), (0, 1));
        assert_eq!(ticket.metadata["n"], "5");
        assert_eq!(ticket.metadata["none"], "");
        assert_eq!(ticket.metadata["nested"], "{\"b\": [1, \"\\u00e9\"]}");
    }

    #[test]
    fn a_refused_ticket_names_the_field() {
        let mut body = request();
        body["sla"].as_object_mut().unwrap().remove("deadline");
        let reason = refusal(&body);
        assert!(reason.starts_with("Validation error: "), "{reason}");
        assert_eq!(
            reason,
            "Validation error: 1 validation error for ExecutionTicket\nsla.deadline\n  Field required"
        );
        let mut body = request();
        body["risk_band"] = json!("LOW");
        assert!(
            refusal(&body).contains("risk_band"),
            "the contract's symbols are lower case"
        );
        let mut body = request();
        body["ticket_id"] = json!("me");
        body["dependencies"] = json!(["me"]);
        assert!(refusal(&body).contains("Ticket não pode depender de si mesmo"));
        let mut body = request();
        body["started_at"] = json!(10);
        body["completed_at"] = json!(10);
        assert!(refusal(&body).contains("completed_at deve ser maior que started_at"));
    }

    #[test]
    fn json_dumps_writes_as_python_does() {
        // python3 -c 'import json; print(json.dumps({"k":"ação","l":[1,2.5,None,True],"q":"a\"b"}))'
        assert_eq!(
            python_json_dumps(&json!({"k": "ação", "l": [1, 2.5, null, true], "q": "a\"b"})),
            r#"{"k": "a\u00e7\u00e3o", "l": [1, 2.5, null, true], "q": "a\"b"}"#
        );
    }

    #[test]
    fn tokens_are_signed_as_hs256() {
        // Signed by Python's hmac over the same header and claims (keys sorted).
        let claims = json!({"sub": "1234567890", "name": "John Doe", "iat": 1_516_239_022});
        assert_eq!(
            hs256_token(&claims, b"your-256-bit-secret"),
            "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJpYXQiOjE1MTYyMzkwMjIsIm5hbWUiOiJKb2huIERvZSIsInN1YiI6IjEyMzQ1Njc4OTAifQ.fdOPQ05ZfRhkST2-rIWgUpbqUsVhkkNVNcuG7Ki0s-8"
        );
    }

    #[test]
    fn the_openapi_document_describes_the_contracts_fields() {
        let doc = openapi_document();
        let ticket = &doc["components"]["schemas"]["ExecutionTicket"];
        assert_eq!(ticket["properties"].as_object().unwrap().len(), 30);
        assert!(
            ticket["required"]
                .as_array()
                .unwrap()
                .contains(&json!("plan_id"))
        );
    }
}
