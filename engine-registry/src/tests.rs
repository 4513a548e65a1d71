//! HTTP tests: the blocking client against our axum server, error mapping, retries,
//! basic auth, raw REST details, and interoperability with confluent-kafka's Python client.
//!
//! Depends on every sibling module; servers bind 127.0.0.1:0 and run on a per-test tokio
//! runtime that is dropped (stopping the server) at the end of each test.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::http::{HeaderMap, StatusCode, header};
use axum::routing::{get, post};

use super::*;

const V1: &str =
    r#"{"type":"record","name":"User","namespace":"t","fields":[{"name":"name","type":"string"}]}"#;
const V2: &str = r#"{"type":"record","name":"User","namespace":"t","fields":[{"name":"name","type":"string"},{"name":"age","type":"int","default":0}]}"#;
const BREAKING: &str = r#"{"type":"record","name":"User","namespace":"t","fields":[{"name":"name","type":"string"},{"name":"age","type":"int"}]}"#;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("tokio runtime")
}

struct TestServer {
    runtime: tokio::runtime::Runtime,
    addr: SocketAddr,
    registry: Arc<MemoryRegistry>,
}

impl TestServer {
    fn start() -> Self {
        let runtime = runtime();
        let registry = Arc::new(MemoryRegistry::new());
        let (addr, serving) = server::serve(Arc::clone(&registry), ([127, 0, 0, 1], 0).into())
            .expect("bind test server");
        runtime.spawn(serving);
        Self {
            runtime,
            addr,
            registry,
        }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn client(&self) -> SchemaRegistry {
        let config = RegistryConfig::new(self.url()).with_retries(
            1,
            Duration::from_millis(1),
            Duration::from_millis(5),
        );
        SchemaRegistry::connect(config, &MockRegistries::new()).expect("connect")
    }
}

/// Serves `app` (a fake registry) on a fresh runtime.
fn serve_fake(app: Router) -> (tokio::runtime::Runtime, SocketAddr) {
    let runtime = runtime();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.set_nonblocking(true).expect("nonblocking");
    let addr = listener.local_addr().expect("addr");
    runtime.spawn(async move {
        let listener = tokio::net::TcpListener::from_std(listener)?;
        axum::serve(listener, app).await
    });
    (runtime, addr)
}

#[test]
fn client_drives_every_method_over_http() {
    let server = TestServer::start();
    let client = server.client();
    client.ping().unwrap();

    let id = client.register("users-value", V1).unwrap();
    assert_eq!(
        client.register("orders-value", V1).unwrap(),
        id,
        "global ids"
    );
    assert_eq!(client.register("users-value", V1).unwrap(), id);
    // A different handle (empty cache) reaches the server and still gets the same id.
    assert_eq!(server.client().register("users-value", V1).unwrap(), id);
    let id2 = client.register("users-value", V2).unwrap();
    assert_ne!(id, id2);

    assert_eq!(&*client.schema_by_id(id).unwrap(), V1);
    assert_eq!(
        client.subjects().unwrap(),
        vec!["orders-value", "users-value"]
    );
    assert_eq!(client.versions("users-value").unwrap(), vec![1, 2]);

    let latest = client.version("users-value", VersionRef::Latest).unwrap();
    assert_eq!(
        latest,
        SubjectVersion {
            subject: "users-value".to_owned(),
            id: id2,
            version: 2,
            schema: V2.to_owned(),
        }
    );
    assert_eq!(
        client
            .version("users-value", VersionRef::Number(1))
            .unwrap()
            .id,
        id
    );

    let found = server.client().lookup("users-value", V1).unwrap().unwrap();
    assert_eq!((found.id, found.version), (id, 1));
    assert_eq!(client.lookup("users-value", V1).unwrap(), Some(found));
    assert_eq!(client.lookup("users-value", BREAKING).unwrap(), None);
    assert_eq!(client.lookup("nobody", V1).unwrap(), None);

    let ok = client
        .check_compatibility("users-value", V2, VersionRef::Latest)
        .unwrap();
    assert!(ok.is_compatible && ok.messages.is_empty());
    let bad = client
        .check_compatibility("users-value", BREAKING, VersionRef::Number(1))
        .unwrap();
    assert!(!bad.is_compatible);
    assert!(bad.messages.iter().any(|m| m.contains("age")), "{bad:?}");
    assert!(
        client
            .check_compatibility("empty-subject", BREAKING, VersionRef::Latest)
            .unwrap()
            .is_compatible
    );

    assert_eq!(client.compatibility(None).unwrap(), Compatibility::Backward);
    assert_eq!(
        client.compatibility(Some("users-value")).unwrap(),
        Compatibility::Backward
    );
    client
        .set_compatibility(Some("users-value"), Compatibility::None)
        .unwrap();
    client
        .set_compatibility(None, Compatibility::FullTransitive)
        .unwrap();
    assert_eq!(
        client.compatibility(Some("users-value")).unwrap(),
        Compatibility::None
    );
    assert_eq!(
        client.compatibility(Some("orders-value")).unwrap(),
        Compatibility::FullTransitive
    );
    assert_eq!(
        client.compatibility(None).unwrap(),
        Compatibility::FullTransitive
    );
    assert_eq!(
        server.registry.compatibility(None).unwrap(),
        Compatibility::FullTransitive
    );
    // The override lets a breaking change through.
    let id3 = client.register("users-value", BREAKING).unwrap();

    assert_eq!(client.delete_subject("orders-value").unwrap(), vec![1]);
    assert_eq!(client.subjects().unwrap(), vec!["users-value"]);
    assert!(matches!(
        client.versions("orders-value"),
        Err(RegistryError::SubjectNotFound { .. })
    ));

    // Subjects with characters that need encoding survive the round trip.
    let odd = "team/a b:c-value";
    assert_eq!(client.register(odd, V1).unwrap(), id);
    assert!(client.subjects().unwrap().contains(&odd.to_owned()));
    assert_eq!(client.versions(odd).unwrap(), vec![1]);

    // Stop the server: cached answers still come back, so they did no HTTP.
    drop(server);
    assert_eq!(client.register("users-value", V1).unwrap(), id);
    assert_eq!(client.register("users-value", BREAKING).unwrap(), id3);
    assert_eq!(&*client.schema_by_id(id).unwrap(), V1);
    assert_eq!(
        client.lookup("users-value", V1).unwrap().map(|v| v.id),
        Some(id)
    );
    assert!(matches!(
        client.subjects(),
        Err(RegistryError::Unavailable { .. })
    ));
    assert!(client.ping().is_err());
}

#[test]
fn http_error_codes_become_typed_errors() {
    let server = TestServer::start();
    let client = server.client();
    client.register("s", V1).unwrap();

    let e = client.versions("missing").unwrap_err();
    assert!(
        matches!(&e, RegistryError::SubjectNotFound { subject } if subject == "missing"),
        "{e}"
    );
    let e = client.version("s", VersionRef::Number(9)).unwrap_err();
    assert!(
        matches!(&e, RegistryError::VersionNotFound { subject, version } if subject == "s" && version == "9"),
        "{e}"
    );
    let e = client.schema_by_id(4242).unwrap_err();
    assert!(
        matches!(&e, RegistryError::SchemaNotFound { what } if what == "id 4242"),
        "{e}"
    );
    assert!(e.to_string().contains("40403"));
    let e = client.register("s", "{nope").unwrap_err();
    assert!(matches!(e, RegistryError::InvalidSchema { .. }), "{e}");
    let e = client.register("s", BREAKING).unwrap_err();
    match &e {
        RegistryError::Incompatible {
            subject, messages, ..
        } => {
            assert_eq!(subject, "s");
            assert!(messages.iter().any(|m| m.contains("age")), "{messages:?}");
        }
        other => panic!("expected Incompatible, got {other}"),
    }
    assert_eq!(e.error_code(), Some(409));
    let e = client.delete_subject("missing").unwrap_err();
    assert_eq!(e.error_code(), Some(40401));
}

#[test]
fn closed_port_fails_after_bounded_retries() {
    let addr = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap()
    };
    let config = RegistryConfig::new(format!("http://{addr}")).with_retries(
        2,
        Duration::from_millis(1),
        Duration::from_millis(4),
    );
    let client = SchemaRegistry::connect(config, &MockRegistries::new()).unwrap();
    let e = client.register("s", V1).unwrap_err();
    match &e {
        RegistryError::Unavailable {
            attempts,
            url,
            method,
            ..
        } => {
            assert_eq!(*attempts, 3, "one attempt plus two retries");
            assert!(url.contains(&addr.to_string()), "{url}");
            assert_eq!(*method, "POST");
        }
        other => panic!("expected Unavailable, got {other}"),
    }
    let text = e.to_string();
    assert!(
        text.contains("after 3 attempt(s)") && text.contains("check that the registry runs"),
        "{text}"
    );
    assert!(e.is_transient());
    // ping never retries: start-up wants a quick answer.
    match client.ping().unwrap_err() {
        RegistryError::Unavailable { attempts, .. } => assert_eq!(attempts, 1),
        other => panic!("expected Unavailable, got {other}"),
    }
}

#[test]
fn retries_5xx_but_not_4xx() {
    let server_errors = Arc::new(AtomicU32::new(0));
    let not_found = Arc::new(AtomicU32::new(0));
    let (s, n) = (Arc::clone(&server_errors), Arc::clone(&not_found));
    let app = Router::new()
        .route(
            "/subjects",
            get(move || {
                s.fetch_add(1, Ordering::SeqCst);
                async {
                    (
                        StatusCode::INTERNAL_SERVER_ERROR,
                        r#"{"error_code":50001,"message":"store down"}"#,
                    )
                }
            }),
        )
        .route(
            "/subjects/{s}/versions",
            get(move || {
                n.fetch_add(1, Ordering::SeqCst);
                async {
                    (
                        StatusCode::NOT_FOUND,
                        r#"{"error_code":40401,"message":"Subject not found."}"#,
                    )
                }
            }),
        )
        .route(
            "/schemas/ids/{id}",
            get(|| async { (StatusCode::OK, "this is not json") }),
        );
    let (_runtime, addr) = serve_fake(app);
    let config = RegistryConfig::new(format!("http://{addr}")).with_retries(
        2,
        Duration::from_millis(1),
        Duration::from_millis(4),
    );
    let client = SchemaRegistry::connect(config, &MockRegistries::new()).unwrap();

    match client.subjects().unwrap_err() {
        RegistryError::Api {
            status,
            error_code,
            message,
            attempts,
            url,
            ..
        } => {
            assert_eq!((status, error_code, attempts), (500, 50001, 3));
            assert_eq!(message, "store down");
            assert!(url.ends_with("/subjects"));
        }
        other => panic!("expected Api, got {other}"),
    }
    assert_eq!(server_errors.load(Ordering::SeqCst), 3);

    assert!(matches!(
        client.versions("x").unwrap_err(),
        RegistryError::SubjectNotFound { .. }
    ));
    assert_eq!(
        not_found.load(Ordering::SeqCst),
        1,
        "4xx must not be retried"
    );

    assert!(matches!(
        client.schema_by_id(1).unwrap_err(),
        RegistryError::Decode { .. }
    ));
}

#[test]
fn basic_auth_and_content_type_are_sent() {
    let seen: Arc<Mutex<Vec<(String, String)>>> = Arc::default();
    let (a, b) = (Arc::clone(&seen), Arc::clone(&seen));
    let record = |seen: &Mutex<Vec<(String, String)>>, headers: &HeaderMap| {
        let value = |name| {
            headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_owned()
        };
        seen.lock()
            .unwrap()
            .push((value(header::AUTHORIZATION), value(header::CONTENT_TYPE)));
    };
    let app = Router::new()
        .route(
            "/config",
            get(move |headers: HeaderMap| {
                record(&a, &headers);
                async { r#"{"compatibilityLevel":"FULL"}"# }
            }),
        )
        .route(
            "/subjects/{s}/versions",
            post(move |headers: HeaderMap| {
                record(&b, &headers);
                async { r#"{"id":7}"# }
            }),
        );
    let (_runtime, addr) = serve_fake(app);
    let client = SchemaRegistry::connect(
        RegistryConfig::new(format!("http://user:p%40ss@{addr}")),
        &MockRegistries::new(),
    )
    .unwrap();
    client.ping().unwrap();
    assert_eq!(client.compatibility(None).unwrap(), Compatibility::Full);
    assert_eq!(client.register("s", V1).unwrap(), 7);
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 3);
    // base64("user:p@ss")
    for (auth, _) in &seen {
        assert_eq!(auth, "Basic dXNlcjpwQHNz");
    }
    assert_eq!(seen[2].1, CONTENT_TYPE);
}

/// Raw REST details that Confluent clients rely on.
#[test]
fn server_speaks_confluent_rest() {
    let server = TestServer::start();
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let base = server.url();
    let get = |path: &str| {
        let mut r = agent.get(format!("{base}{path}")).call().unwrap();
        let ct = r
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned();
        (
            r.status().as_u16(),
            ct,
            r.body_mut().read_to_string().unwrap(),
        )
    };
    let post = |path: &str, content_type: &str, body: &str| {
        let mut r = agent
            .post(format!("{base}{path}"))
            .header("Content-Type", content_type)
            .send(body)
            .unwrap();
        (r.status().as_u16(), r.body_mut().read_to_string().unwrap())
    };
    let body = serde_json::json!({ "schema": V1 }).to_string();
    let typed =
        serde_json::json!({ "schema": V1, "schemaType": "AVRO", "references": [] }).to_string();

    assert_eq!(get("/"), (200, CONTENT_TYPE.to_owned(), "{}".to_owned()));
    assert_eq!(
        post("/subjects/a/versions?normalize=false", CONTENT_TYPE, &body),
        (200, r#"{"id":1}"#.to_owned())
    );
    assert_eq!(
        post("/subjects/b/versions", "application/json", &typed),
        (200, r#"{"id":1}"#.to_owned())
    );
    let (status, text) = post(
        "/subjects/c/versions",
        CONTENT_TYPE,
        &serde_json::json!({ "schema": "{}", "schemaType": "PROTOBUF" }).to_string(),
    );
    assert_eq!(status, 422);
    assert!(text.contains(r#""error_code":42201"#), "{text}");
    let (status, text) = post(
        "/subjects/a?normalize=false&deleted=false",
        CONTENT_TYPE,
        &body,
    );
    assert_eq!(status, 200);
    let found: SubjectVersion = serde_json::from_str(&text).unwrap();
    assert_eq!(
        (found.id, found.version, found.subject.as_str()),
        (1, 1, "a")
    );

    let (status, ct, text) = get("/subjects/a/versions/latest/schema");
    assert_eq!(
        (status, ct.as_str(), text.as_str()),
        (200, CONTENT_TYPE, V1)
    );
    assert_eq!(get("/subjects/a/versions/-1").0, 200);
    assert_eq!(get("/schemas/types").2, r#"["AVRO"]"#);
    assert_eq!(
        get("/schemas/ids/1/versions").2,
        r#"[{"subject":"a","version":1},{"subject":"b","version":1}]"#
    );
    assert_eq!(get("/schemas/ids/1?subject=a&format=x").0, 200);
    assert_eq!(
        get("/subjects?deleted=false&offset=0&limit=-1").2,
        r#"["a","b"]"#
    );

    let (status, ct, text) = get("/subjects/a/versions/zero");
    assert_eq!((status, ct.as_str()), (422, CONTENT_TYPE));
    let error: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(error["error_code"], 42202);
    assert!(error["message"].as_str().unwrap().contains("zero"));
    let (status, _, text) = get("/subjects/nope/versions");
    assert_eq!(status, 404);
    assert!(text.contains("40401"));
    assert!(get("/schemas/ids/abc").2.contains("40403"));
    assert_eq!(get("/no/such/endpoint").0, 404);

    let breaking = serde_json::json!({ "schema": BREAKING }).to_string();
    let (status, text) = post(
        "/compatibility/subjects/a/versions/latest?verbose=true",
        CONTENT_TYPE,
        &breaking,
    );
    assert_eq!(status, 200);
    let report: CompatibilityReport = serde_json::from_str(&text).unwrap();
    assert!(!report.is_compatible && !report.messages.is_empty());
    let (_, text) = post(
        "/compatibility/subjects/a/versions/latest",
        CONTENT_TYPE,
        &breaking,
    );
    assert_eq!(text, r#"{"is_compatible":false}"#);
    let (_, text) = post("/compatibility/subjects/a/versions", CONTENT_TYPE, &body);
    assert_eq!(text, r#"{"is_compatible":true}"#);
    let (status, text) = post("/compatibility/subjects/a/versions/5", CONTENT_TYPE, &body);
    assert_eq!(status, 404);
    assert!(text.contains("40402"), "{text}");

    let put = |path: &str, body: &str| {
        let mut r = agent
            .put(format!("{base}{path}"))
            .header("Content-Type", CONTENT_TYPE)
            .send(body)
            .unwrap();
        (r.status().as_u16(), r.body_mut().read_to_string().unwrap())
    };
    assert_eq!(
        put("/config/a", r#"{"compatibility":"FULL"}"#),
        (200, r#"{"compatibility":"FULL"}"#.to_owned())
    );
    assert_eq!(
        get("/config/a?defaultToGlobal=true").2,
        r#"{"compatibilityLevel":"FULL"}"#
    );
    assert_eq!(get("/config/b").2, r#"{"compatibilityLevel":"BACKWARD"}"#);
    let (status, text) = put("/config", r#"{"compatibility":"SIDEWAYS"}"#);
    assert_eq!(status, 422);
    assert!(text.contains("42203"), "{text}");

    let mut r = agent
        .delete(format!("{base}/subjects/b?permanent=false"))
        .call()
        .unwrap();
    assert_eq!(r.body_mut().read_to_string().unwrap(), "[1]");
}

/// Runs confluent-kafka's own Python client (engine/tests/python/registry_interop.py) against
/// our server.
#[test]
fn confluent_kafka_python_client_interoperates() {
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../engine/tests/python/registry_interop.py");
    assert!(script.exists(), "missing {}", script.display());
    let python = std::env::var("PYTHON").unwrap_or_else(|_| "python3".to_owned());
    let probe = std::process::Command::new(&python)
        .args([
            "-c",
            "import confluent_kafka.schema_registry.avro, fastavro, httpx, attrs, cachetools, authlib",
        ])
        .output();
    match probe {
        Err(e) => {
            eprintln!(
                "SKIPPED confluent_kafka_python_client_interoperates: cannot run {python}: {e}"
            );
            return;
        }
        Ok(out) if !out.status.success() => {
            eprintln!(
                "SKIPPED confluent_kafka_python_client_interoperates: Python modules missing \
                 (pip install confluent-kafka fastavro requests attrs cachetools httpx authlib): {}",
                String::from_utf8_lossy(&out.stderr)
            );
            return;
        }
        Ok(_) => {}
    }
    let schema = std::env::var("TICKET_SCHEMA").unwrap_or_else(|_| {
        concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../schemas/execution-ticket/execution-ticket.avsc"
        )
        .to_owned()
    });
    assert!(
        std::path::Path::new(&schema).exists(),
        "execution-ticket.avsc not found at {schema}; set TICKET_SCHEMA"
    );

    let server = TestServer::start();
    let out = std::process::Command::new(&python)
        .arg(&script)
        .env("SCHEMA_REGISTRY_URL", server.url())
        .env("TICKET_SCHEMA", &schema)
        .output()
        .expect("run python");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "interop script failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    assert!(stdout.contains(" passed, 0 failed"), "{stdout}");
    eprintln!("{stdout}");
    // The Python side's writes are visible in the registry we own.
    assert!(
        server
            .registry
            .subjects()
            .unwrap()
            .contains(&"tickets-value".to_owned())
    );
    drop(server.runtime);
}
