//! The Helm chart (`deploy/helm/engine`) and the image it runs (`Dockerfile`).
//!
//! The chart: `helm lint` and `helm template` of each service's values
//! (`deploy/helm/values/`), the rendered manifests checked for what a deployment relies
//! on (the variables the services read, the state volume, the probes, the headless
//! Service, the secret references, the preflight hook), the configuration it renders run
//! through `engine validate` itself, and wrong values refused with their fix. Helm is the
//! binary in `HELM` (`scripts/test` builds it once per machine with `ensure_helm` from
//! `scripts/env.sh`); without it these tests say they are skipped.
//!
//! The image: no Docker engine runs here, so its build is checked against `scripts/run`
//! instead: the same steps, the same cargo command, the same binary.

#![allow(clippy::unwrap_used)] // tests state their expectations with unwrap

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde::Deserialize;
use serde_json::Value;

const CHART: &str = "deploy/helm/engine";
const SERVICES: [&str; 3] = [
    "orchestrator-dynamic",
    "execution-ticket-service",
    "worker-agents",
];
/// The registry the migration guide deploys against (its `config.kafka.schemaRegistryUrl`).
const GUIDE_REGISTRY: &str = "http://schema-registry.neural-hive-kafka.svc.cluster.local:8081";
const NAMESPACE: &str = "prod";

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The helm binary from `HELM`, or `None` after saying the test is skipped.
fn helm() -> Option<PathBuf> {
    match std::env::var_os("HELM") {
        Some(path) if !path.is_empty() => Some(PathBuf::from(path)),
        _ => {
            eprintln!(
                "skipped: a Helm chart test (scripts/test runs it; or run `source scripts/env.sh && ensure_helm` and set HELM to the path it exports)"
            );
            None
        }
    }
}

fn values_file(service: &str) -> String {
    format!("deploy/helm/values/{service}.yaml")
}

/// A values file as data.
fn values_of(service: &str) -> Value {
    let text = std::fs::read_to_string(root().join(values_file(service))).unwrap();
    serde_norway::from_str(&text).unwrap()
}

fn run_helm(helm: &Path, args: &[&str]) -> Output {
    Command::new(helm)
        .args(args)
        .current_dir(root())
        .output()
        .unwrap_or_else(|e| panic!("cannot run helm at {}: {e}", helm.display()))
}

/// The documents of `helm template RELEASE CHART --namespace prod ARGS...`.
struct Rendered {
    docs: Vec<Value>,
}

impl Rendered {
    fn of(helm: &Path, release: &str, args: &[&str]) -> Result<Rendered, String> {
        let mut all = vec!["template", release, CHART, "--namespace", NAMESPACE];
        all.extend_from_slice(args);
        let out = run_helm(helm, &all);
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr).into_owned());
        }
        let text = String::from_utf8(out.stdout).unwrap();
        let docs = serde_norway::Deserializer::from_str(&text)
            .map(|doc| Value::deserialize(doc).unwrap())
            .filter(|doc| !doc.is_null())
            .collect();
        Ok(Rendered { docs })
    }

    fn all(&self, kind: &str) -> Vec<&Value> {
        self.docs.iter().filter(|d| d["kind"] == kind).collect()
    }

    fn one(&self, kind: &str, name: &str) -> &Value {
        let found: Vec<_> = self
            .all(kind)
            .into_iter()
            .filter(|d| d["metadata"]["name"] == name)
            .collect();
        assert_eq!(found.len(), 1, "one {kind} named {name}: {:#?}", self.docs);
        found[0]
    }

    fn statefulset(&self) -> &Value {
        let all = self.all("StatefulSet");
        assert_eq!(all.len(), 1, "one StatefulSet");
        all[0]
    }

    /// The engine configuration a ConfigMap holds, parsed.
    fn config(&self, name: &str) -> (String, toml::Table) {
        let text = self.one("ConfigMap", name)["data"]["engine.toml"]
            .as_str()
            .unwrap()
            .to_string();
        let table = text
            .parse::<toml::Table>()
            .unwrap_or_else(|e| panic!("ConfigMap {name} is not TOML: {e}\n{text}"));
        (text, table)
    }
}

/// `helm template` that must succeed.
fn render(helm: &Path, release: &str, args: &[&str]) -> Rendered {
    Rendered::of(helm, release, args).unwrap_or_else(|e| panic!("helm template failed: {e}"))
}

fn container<'a>(pod_spec: &'a Value, name: &str) -> &'a Value {
    pod_spec["containers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("container {name} in {pod_spec:#}"))
}

/// A container's environment, in order, by name.
fn env_of(container: &Value) -> Vec<(String, Value)> {
    container["env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["name"].as_str().unwrap().to_string(), e.clone()))
        .collect()
}

fn env_var<'a>(env: &'a [(String, Value)], name: &str) -> &'a Value {
    &env.iter()
        .find(|(n, _)| n == name)
        .unwrap_or_else(|| panic!("no {name} in {env:#?}"))
        .1
}

fn position(env: &[(String, Value)], name: &str) -> usize {
    env.iter().position(|(n, _)| n == name).unwrap()
}

fn strings(value: &Value) -> Vec<String> {
    value
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect()
}

/// `engine ARGS...` with the environment of a pod that names no broker or registry, so
/// nothing is contacted (validate uses an in-process registry then).
fn engine(args: &[&str], envs: &[(&str, &str)]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_engine"))
        .args(args)
        .env_remove("KAFKA_BOOTSTRAP_SERVERS")
        .env_remove("KAFKA_SCHEMA_REGISTRY_URL")
        .env_remove("ENGINE_CONFIG")
        .env_remove("ENGINE_STATE_DIR")
        .envs(envs.iter().copied())
        .env("ENGINE_LOG", "warn")
        .output()
        .unwrap()
}

/// `engine validate TOPOLOGY` with `config` as the configuration file.
fn engine_validate(topology: &str, config: &str) -> Output {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("engine.toml");
    std::fs::write(&path, config).unwrap();
    engine(
        &["validate", topology, "--config", path.to_str().unwrap()],
        &[],
    )
}

/// "256Mi" -> 256, "1Gi" -> 1024.
fn mebibytes(quantity: &str) -> u64 {
    if let Some(n) = quantity.strip_suffix("Mi") {
        n.parse().unwrap()
    } else if let Some(n) = quantity.strip_suffix("Gi") {
        n.parse::<u64>().unwrap() * 1024
    } else {
        panic!("unexpected quantity {quantity}")
    }
}

/// The uid:gid the image runs as (its last `USER`).
fn dockerfile_user() -> String {
    let text = std::fs::read_to_string(root().join("Dockerfile")).unwrap();
    text.lines()
        .rev()
        .find_map(|l| l.trim().strip_prefix("USER "))
        .unwrap()
        .trim()
        .to_string()
}

#[test]
fn each_service_lints_and_renders_a_statefulset_of_its_topology() {
    let Some(helm) = helm() else { return };
    let (uid, gid) = {
        let user = dockerfile_user();
        let (u, g) = user.split_once(':').unwrap();
        (u.parse::<i64>().unwrap(), g.parse::<i64>().unwrap())
    };
    for service in SERVICES {
        let values = values_of(service);
        let lint = run_helm(
            &helm,
            &["lint", "--strict", CHART, "-f", &values_file(service)],
        );
        assert!(
            lint.status.success(),
            "helm lint {service}: {}{}",
            String::from_utf8_lossy(&lint.stdout),
            String::from_utf8_lossy(&lint.stderr)
        );

        let r = render(&helm, service, &["-f", &values_file(service)]);
        assert_eq!(values["topology"], service, "{service}'s values run it");
        let sts = r.statefulset();
        assert_eq!(sts["metadata"]["name"], service);
        let pod = &sts["spec"]["template"];
        let engine_container = container(&pod["spec"], "engine");

        // `engine run NAME`, serving /health and /metrics, advertised by the pod's name.
        let headless = format!("{service}-headless");
        assert_eq!(
            strings(&engine_container["args"]),
            [
                "run".to_string(),
                service.to_string(),
                "--http".into(),
                "0.0.0.0:8080".into(),
                "--advertised-http".into(),
                format!("$(POD_NAME).{headless}.$(POD_NAMESPACE).svc.cluster.local:8080"),
            ]
        );

        // The variables the services read today, with the values' addresses.
        let env = env_of(engine_container);
        assert_eq!(
            env_var(&env, "KAFKA_BOOTSTRAP_SERVERS")["value"],
            values["config"]["kafka"]["bootstrapServers"]
        );
        assert_eq!(
            env_var(&env, "KAFKA_SCHEMA_REGISTRY_URL")["value"],
            GUIDE_REGISTRY
        );
        assert_eq!(
            env_var(&env, "KAFKA_SCHEMA_REGISTRY_URL")["value"],
            values["config"]["kafka"]["schemaRegistryUrl"]
        );
        assert_eq!(
            env_var(&env, "POD_NAME")["valueFrom"]["fieldRef"]["fieldPath"],
            "metadata.name"
        );
        assert_eq!(
            env_var(&env, "POD_NAMESPACE")["valueFrom"]["fieldRef"]["fieldPath"],
            "metadata.namespace"
        );

        // The configuration file: the ConfigMap, mounted where ENGINE_CONFIG points.
        assert_eq!(
            env_var(&env, "ENGINE_CONFIG")["value"],
            "/etc/engine/engine.toml"
        );
        let config_volume = pod["spec"]["volumes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["name"] == "config")
            .unwrap();
        let config_map = config_volume["configMap"]["name"].as_str().unwrap();
        let mounts = engine_container["volumeMounts"].as_array().unwrap();
        let mount_of = |volume: &str| {
            mounts
                .iter()
                .find(|m| m["name"] == volume)
                .unwrap_or_else(|| panic!("no mount of {volume}"))["mountPath"]
                .clone()
        };
        assert_eq!(mount_of("config"), "/etc/engine");
        let (text, config) = r.config(config_map);

        // The state directory is the volume claim of each pod.
        let claims = sts["spec"]["volumeClaimTemplates"].as_array().unwrap();
        assert_eq!(claims.len(), 1);
        assert_eq!(claims[0]["metadata"]["name"], "state");
        assert_eq!(
            claims[0]["spec"]["resources"]["requests"]["storage"],
            values["persistence"]["size"]
        );
        assert_eq!(
            strings(&claims[0]["spec"]["accessModes"]),
            ["ReadWriteOnce"]
        );
        assert_eq!(
            mount_of("state").as_str(),
            config["runtime"]["state_dir"].as_str(),
            "the engine's state_dir is the volume"
        );
        assert!(
            !pod["spec"]["volumes"]
                .as_array()
                .unwrap()
                .iter()
                .any(|v| v["name"] == "state"),
            "the state is not an emptyDir"
        );

        // Readiness from /health (503 while starting or restoring); liveness must not.
        let port = engine_container["ports"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == "http")
            .unwrap();
        assert_eq!(port["containerPort"], 8080);
        let readiness = &engine_container["readinessProbe"]["httpGet"];
        assert_eq!(readiness["path"], "/health");
        assert_eq!(readiness["port"], "http");
        let liveness = &engine_container["livenessProbe"]["httpGet"];
        assert_eq!(liveness["port"], "http");
        assert_eq!(liveness["path"], "/health/live");

        // A headless Service names each pod; the StatefulSet is governed by it.
        let svc = r.one("Service", &headless);
        assert_eq!(sts["spec"]["serviceName"], headless.as_str());
        assert_eq!(svc["spec"]["clusterIP"], "None");
        assert_eq!(svc["spec"]["publishNotReadyAddresses"], true);
        let selector = &sts["spec"]["selector"]["matchLabels"];
        assert_eq!(&svc["spec"]["selector"], selector);
        for (k, v) in selector.as_object().unwrap() {
            assert_eq!(&pod["metadata"]["labels"][k], v, "pod label {k}");
        }
        assert_eq!(svc["spec"]["ports"][0]["targetPort"], "http");
        // And a regular one serves the topology's API.
        assert_eq!(&r.one("Service", service)["spec"]["selector"], selector);

        // Kubernetes waits longer than the engine's shutdown.
        let shutdown_ms = config["runtime"]["shutdown_timeout_ms"]
            .as_integer()
            .unwrap();
        let grace = sts["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
            .as_i64()
            .unwrap();
        assert!(
            grace * 1000 > shutdown_ms,
            "grace {grace} s, shutdown {shutdown_ms} ms"
        );

        // Prometheus finds /metrics.
        let annotations = &pod["metadata"]["annotations"];
        assert_eq!(annotations["prometheus.io/scrape"], "true");
        assert_eq!(annotations["prometheus.io/port"], "8080");
        assert_eq!(annotations["prometheus.io/path"], "/metrics");

        // At most one instance goes at a time on a drain.
        let pdb = r.one("PodDisruptionBudget", service);
        assert_eq!(&pdb["spec"]["selector"]["matchLabels"], selector);
        assert_eq!(pdb["spec"]["maxUnavailable"], 1);

        // Memory requested above the benchmark's peak RSS (186.2 MiB, ticket-counts).
        let request = engine_container["resources"]["requests"]["memory"]
            .as_str()
            .unwrap();
        assert!(mebibytes(request) > 187, "memory request {request}");

        // The pod runs as the image's user, never as root.
        let security = &pod["spec"]["securityContext"];
        assert_eq!(security["runAsNonRoot"], true);
        assert_eq!(security["runAsUser"], uid);
        assert_eq!(security["runAsGroup"], gid);
        assert_eq!(security["fsGroup"], gid, "the state volume is writable");

        // The chart holds no secret values at all.
        assert!(r.all("Secret").is_empty());

        // The engine itself accepts the configuration the chart renders.
        let out = engine_validate(service, &text);
        assert!(
            out.status.success(),
            "engine validate {service} refused the chart's configuration:\n{text}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(String::from_utf8_lossy(&out.stdout).contains("is valid"));
    }
}

#[test]
fn configuration_values_reach_the_engine_with_their_types() {
    let Some(helm) = helm() else { return };
    let r = render(
        &helm,
        "workers",
        &[
            "-f",
            &values_file("worker-agents"),
            "--set",
            "config.runtime.commit_interval_ms=500",
            "--set",
            "config.runtime.processing_guarantee=exactly_once_v2",
            "--set",
            "config.runtime.internal_topic_configs.min\\.insync\\.replicas=2",
            "--set",
            "config.schemaRegistry.fallback=fail",
            "--set",
            "config.schemaRegistry.auto_register=false",
            "--set",
            "config.topologyOptions.executor=shell",
            "--set-json",
            "config.topologyOptions.failure_rate=0.25",
            "--set-string",
            "config.topologyOptions.commands.BUILD=make build",
            "--set",
            "config.kafka.properties.producer\\.linger\\.ms=10",
            "--set-json",
            "config.kafka.properties.queue\\.buffering\\.max\\.messages=1000000",
        ],
    );
    let (text, config) = r.config("workers");
    let runtime = &config["runtime"];
    // The engine's integers stay integers (YAML numbers reach helm as floats).
    assert_eq!(runtime["commit_interval_ms"].as_integer(), Some(500));
    assert_eq!(runtime["shutdown_timeout_ms"].as_integer(), Some(30000));
    assert_eq!(
        runtime["processing_guarantee"].as_str(),
        Some("exactly_once_v2")
    );
    // Kafka properties and topic configurations are strings to the engine, whole
    // numbers written out in full.
    assert_eq!(
        runtime["internal_topic_configs"]["min.insync.replicas"].as_str(),
        Some("2")
    );
    let properties = &config["kafka"]["properties"];
    assert_eq!(properties["producer.linger.ms"].as_str(), Some("10"));
    assert_eq!(
        properties["queue.buffering.max.messages"].as_str(),
        Some("1000000")
    );
    assert_eq!(config["schema_registry"]["fallback"].as_str(), Some("fail"));
    assert_eq!(
        config["schema_registry"]["auto_register"].as_bool(),
        Some(false)
    );
    let options = &config["topologies"]["worker-agents"];
    assert_eq!(options["executor"].as_str(), Some("shell"));
    assert_eq!(options["failure_rate"].as_float(), Some(0.25));
    assert_eq!(options["max_in_flight"].as_integer(), Some(10));
    assert_eq!(options["commands"]["BUILD"].as_str(), Some("make build"));
    let out = engine_validate("worker-agents", &text);
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // What the chart cannot know is the engine's to refuse: here an option the topology
    // does not have, named in the refusal (the preflight Job runs this before rollout).
    let r = render(
        &helm,
        "workers",
        &[
            "-f",
            &values_file("worker-agents"),
            "--set",
            "config.topologyOptions.max_in_flihgt=5",
        ],
    );
    let (text, _) = r.config("workers");
    let out = engine_validate("worker-agents", &text);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("max_in_flihgt"));
}

#[test]
fn credentials_come_from_secrets_and_never_reach_a_config_map() {
    let Some(helm) = helm() else { return };
    let r = render(
        &helm,
        "tickets",
        &[
            "-f",
            &values_file("execution-ticket-service"),
            "--set",
            "config.kafka.sasl.existingSecret=kafka-credentials",
            "--set",
            "config.schemaRegistryCredentials.existingSecret=registry-credentials",
            "--set",
            "config.kafka.secretProperties.ssl\\.key\\.password.secretName=kafka-tls",
            "--set",
            "config.kafka.secretProperties.ssl\\.key\\.password.key=key-password",
            "--set",
            "config.kafka.properties.security\\.protocol=SASL_SSL",
            "--set",
            "config.kafka.properties.sasl\\.mechanism=SCRAM-SHA-512",
        ],
    );
    assert!(r.all("Secret").is_empty(), "the chart creates no Secret");
    let sts = r.statefulset();
    let job = r.one("Job", "tickets-preflight");
    // The instances and every preflight check authenticate the same way.
    let mut containers = vec![container(&sts["spec"]["template"]["spec"], "engine")];
    containers.extend(
        job["spec"]["template"]["spec"]["containers"]
            .as_array()
            .unwrap(),
    );
    assert_eq!(containers.len(), 1 + 1 + 2, "engine, validate, two checks");
    for c in containers {
        let env = env_of(c);
        let secret_ref = |name: &str| env_var(&env, name)["valueFrom"]["secretKeyRef"].clone();
        assert_eq!(
            secret_ref("KAFKA_SASL_USERNAME"),
            serde_json::json!({"name": "kafka-credentials", "key": "username"})
        );
        assert_eq!(
            secret_ref("KAFKA_SASL_PASSWORD"),
            serde_json::json!({"name": "kafka-credentials", "key": "password"})
        );
        assert_eq!(
            secret_ref("SCHEMA_REGISTRY_USERNAME"),
            serde_json::json!({"name": "registry-credentials", "key": "username"})
        );
        assert_eq!(
            secret_ref("SCHEMA_REGISTRY_PASSWORD"),
            serde_json::json!({"name": "registry-credentials", "key": "password"})
        );
        assert_eq!(
            secret_ref("KAFKA_SECRET_PROPERTY_0"),
            serde_json::json!({"name": "kafka-tls", "key": "key-password"})
        );
        // Kubernetes substitutes $(VAR) only for variables defined before.
        let url = env_var(&env, "KAFKA_SCHEMA_REGISTRY_URL")["value"]
            .as_str()
            .unwrap();
        assert_eq!(
            url,
            "http://$(SCHEMA_REGISTRY_USERNAME):$(SCHEMA_REGISTRY_PASSWORD)@schema-registry.neural-hive-kafka.svc.cluster.local:8081"
        );
        assert!(
            position(&env, "SCHEMA_REGISTRY_PASSWORD")
                < position(&env, "KAFKA_SCHEMA_REGISTRY_URL")
        );
        let args = strings(&c["args"]);
        for property in [
            "sasl.username=$(KAFKA_SASL_USERNAME)",
            "sasl.password=$(KAFKA_SASL_PASSWORD)",
            "ssl.key.password=$(KAFKA_SECRET_PROPERTY_0)",
        ] {
            let at = args
                .iter()
                .position(|a| a == property)
                .unwrap_or_else(|| panic!("{property} in {args:?}"));
            assert_eq!(args[at - 1], "--kafka");
        }
    }
    // The ConfigMaps carry the non-secret properties and nothing secret.
    for name in ["tickets", "tickets-preflight"] {
        let (text, config) = r.config(name);
        assert_eq!(
            config["kafka"]["properties"]["security.protocol"].as_str(),
            Some("SASL_SSL")
        );
        for secret in [
            "sasl.username",
            "sasl.password",
            "ssl.key.password",
            "$(",
            "@",
        ] {
            assert!(
                !text.contains(secret),
                "{secret} in ConfigMap {name}:\n{text}"
            );
        }
        // And the engine accepts it, with the secret properties given as flags.
        let out = engine_validate("execution-ticket-service", &text);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    // Secrets offered as plain values are refused with where they go instead, and the
    // refusal does not echo them.
    for (set, fix) in [
        (
            "config.kafka.properties.sasl\\.password=hunter2",
            "config.kafka.sasl.existingSecret",
        ),
        (
            "config.kafka.properties.consumer\\.ssl\\.key\\.password=hunter2",
            "config.kafka.secretProperties.consumer.ssl.key.password",
        ),
        (
            "config.kafka.properties.sasl\\.oauthbearer\\.client\\.secret=hunter2",
            "config.kafka.secretProperties",
        ),
        (
            "config.kafka.schemaRegistryUrl=https://svc:hunter2@registry:8081",
            "config.schemaRegistryCredentials.existingSecret",
        ),
    ] {
        let err = Rendered::of(
            &helm,
            "tickets",
            &["-f", &values_file("execution-ticket-service"), "--set", set],
        )
        .err()
        .unwrap_or_else(|| panic!("--set {set} was accepted"));
        assert!(err.contains(fix), "--set {set}: {err}");
        assert!(
            !err.contains("hunter2"),
            "the refusal echoes the secret: {err}"
        );
    }
}

#[test]
fn the_preflight_hook_validates_and_checks_the_contracts_before_rollout() {
    let Some(helm) = helm() else { return };
    let dockerfile = std::fs::read_to_string(root().join("Dockerfile")).unwrap();
    assert!(
        dockerfile
            .lines()
            .any(|l| l.trim() == "COPY schemas /usr/share/engine/schemas"),
        "the image holds the contracts the hook checks"
    );
    for service in SERVICES {
        let values = values_of(service);
        let r = render(&helm, service, &["-f", &values_file(service)]);
        let job = r.one("Job", &format!("{service}-preflight"));
        let hooks = &job["metadata"]["annotations"];
        assert_eq!(hooks["helm.sh/hook"], "pre-install,pre-upgrade");
        let spec = &job["spec"]["template"]["spec"];
        assert_eq!(spec["restartPolicy"], "Never");
        assert_eq!(job["spec"]["backoffLimit"], 0);

        // Its configuration exists before it (a pre-install hook runs before the
        // release's own ConfigMap) and is the release's.
        let config_map = spec["volumes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["name"] == "config")
            .unwrap()["configMap"]["name"]
            .as_str()
            .unwrap()
            .to_string();
        let hook_config = r.one("ConfigMap", &config_map);
        assert_eq!(
            hook_config["metadata"]["annotations"]["helm.sh/hook"],
            "pre-install,pre-upgrade"
        );
        let weight = |doc: &Value| {
            doc["metadata"]["annotations"]["helm.sh/hook-weight"]
                .as_str()
                .unwrap()
                .parse::<i32>()
                .unwrap()
        };
        assert!(weight(hook_config) < weight(job));
        let (hook_text, _) = r.config(&config_map);
        let (text, _) = r.config(service);
        assert_eq!(hook_text, text);

        // `engine validate NAME`, then `engine schema check SUBJECT FILE` per contract.
        let containers = spec["containers"].as_array().unwrap();
        assert_eq!(strings(&containers[0]["args"]), ["validate", service]);
        let checks = values["preflight"]["schemaChecks"].as_array().unwrap();
        assert!(!checks.is_empty());
        assert_eq!(containers.len(), 1 + checks.len());
        let dir = tempfile::tempdir().unwrap();
        let config_path = dir.path().join("engine.toml");
        std::fs::write(&config_path, &text).unwrap();
        for (c, check) in containers.iter().skip(1).zip(checks) {
            let args = strings(&c["args"]);
            let subject = check["subject"].as_str().unwrap();
            let file = check["file"].as_str().unwrap();
            assert_eq!(args, ["schema", "check", subject, file]);
            let env = env_of(c);
            assert_eq!(
                env_var(&env, "KAFKA_SCHEMA_REGISTRY_URL")["value"],
                GUIDE_REGISTRY
            );
            // The file is a contract of the repository, which the image holds there.
            let in_repo = root().join("schemas").join(
                file.strip_prefix("/usr/share/engine/schemas/")
                    .unwrap_or_else(|| panic!("{file} is not under /usr/share/engine/schemas")),
            );
            assert!(in_repo.is_file(), "{file}: no {}", in_repo.display());
            // The engine takes the command line as the Job gives it (an empty registry:
            // any schema is compatible with a subject that has none).
            let in_repo = in_repo.to_str().unwrap();
            let mut local = args.clone();
            local[3] = in_repo.to_string();
            let local: Vec<&str> = local.iter().map(String::as_str).collect();
            let out = engine(
                &local,
                &[
                    ("ENGINE_CONFIG", config_path.to_str().unwrap()),
                    ("KAFKA_SCHEMA_REGISTRY_URL", "mock://preflight"),
                ],
            );
            assert!(
                out.status.success(),
                "{args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            assert!(String::from_utf8_lossy(&out.stdout).contains("compatible with"));
        }
        let out = engine(
            &["validate", service],
            &[("ENGINE_CONFIG", config_path.to_str().unwrap())],
        );
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );

        // The Job's pod is not one of the Services' endpoints.
        let selector = r.statefulset()["spec"]["selector"]["matchLabels"].clone();
        let job_labels = &job["spec"]["template"]["metadata"]["labels"];
        assert!(
            selector
                .as_object()
                .unwrap()
                .iter()
                .any(|(k, v)| &job_labels[k] != v),
            "the Services would route to the preflight pod: {job_labels}"
        );

        // Off, there is no hook.
        let r = render(
            &helm,
            service,
            &[
                "-f",
                &values_file(service),
                "--set",
                "preflight.enabled=false",
            ],
        );
        assert!(r.all("Job").is_empty());
        assert_eq!(r.all("ConfigMap").len(), 1);
    }
}

#[test]
fn wrong_configuration_is_refused_with_how_to_fix_it() {
    let Some(helm) = helm() else { return };
    let workers = values_file("worker-agents");
    let cases: &[(&[&str], &str)] = &[
        (&[], "topology: name the topology this release runs"),
        (
            &[
                "--set",
                "topology=Worker_Agents",
                "--set",
                "config.kafka.bootstrapServers=k:9092",
            ],
            "lowercase letters, digits and dashes",
        ),
        (
            &["-f", &workers, "--set", "config.kafka.bootstrapServers="],
            "config.kafka.bootstrapServers: set the Kafka bootstrap servers",
        ),
        (
            &[
                "-f",
                &workers,
                "--set",
                "config.kafka.schemaRegistryUrl=registry:8081",
            ],
            "must start with http:// or https://",
        ),
        (
            &["-f", &workers, "--set", "replicas=3"],
            "set sourcePartitions to the partition count of worker-agents's source topics",
        ),
        (
            &[
                "-f",
                &workers,
                "--set",
                "replicas=8",
                "--set",
                "sourcePartitions=6",
            ],
            "replicas 8 is more than sourcePartitions 6: each partition belongs to one instance, so 2 instance(s) would get no partition",
        ),
        (
            &["-f", &workers, "--set", "replicas=0"],
            "run at least one instance",
        ),
        (
            &["-f", &workers, "--set", "terminationGracePeriodSeconds=30"],
            "terminationGracePeriodSeconds 30 is not above config.runtime.shutdown_timeout_ms 30000",
        ),
        (
            &[
                "-f",
                &workers,
                "--set",
                "config.runtime.shutdown_timeout_ms=120000",
                "--set",
                "terminationGracePeriodSeconds=60",
            ],
            "set it above 120",
        ),
        (
            &["-f", &workers, "--set", "config.runtime.state_dir=/data"],
            "set persistence.mountPath instead",
        ),
        (
            &[
                "-f",
                &workers,
                "--set",
                "config.runtime.advertised_http=engine-0:8080",
            ],
            "each pod by its name in the headless Service",
        ),
        (
            &[
                "-f",
                &workers,
                "--set",
                "config.schemaRegistry.url=http://r:8081",
            ],
            "set config.kafka.schemaRegistryUrl instead",
        ),
        (
            &[
                "-f",
                &workers,
                "--set",
                "config.kafka.properties.bootstrap\\.servers=k:9092",
            ],
            "set config.kafka.bootstrapServers instead",
        ),
        (
            &[
                "-f",
                &workers,
                "--set",
                "config.kafka.sasl.existingSecret=kafka-credentials",
            ],
            "set it to SASL_SSL or SASL_PLAINTEXT",
        ),
        (
            &[
                "-f",
                &workers,
                "--set",
                "livenessProbe.httpGet.path=/health",
            ],
            "probe /health/live for liveness",
        ),
        (
            &[
                "-f",
                &workers,
                "--set-json",
                "preflight.schemaChecks=[{\"subject\": \"execution.tickets-value\"}]",
            ],
            "preflight.schemaChecks[0].file",
        ),
    ];
    for (args, fix) in cases {
        let err = Rendered::of(&helm, "workers", args)
            .err()
            .unwrap_or_else(|| panic!("{args:?} was accepted"));
        assert!(err.contains(fix), "{args:?}: expected `{fix}` in:\n{err}");
    }
    // (`helm lint` only reports `fail` and `required` as [INFO]; `helm install`,
    // `upgrade` and `template` refuse.)

    // Their right forms render: replicas up to the partitions, a grace period derived
    // from a longer shutdown.
    let r = render(
        &helm,
        "workers",
        &[
            "-f",
            &workers,
            "--set",
            "replicas=6",
            "--set",
            "sourcePartitions=6",
        ],
    );
    assert_eq!(r.statefulset()["spec"]["replicas"], 6);
    let r = render(
        &helm,
        "workers",
        &[
            "-f",
            &workers,
            "--set",
            "config.runtime.shutdown_timeout_ms=120500",
        ],
    );
    assert_eq!(
        r.statefulset()["spec"]["template"]["spec"]["terminationGracePeriodSeconds"],
        121 + 15
    );
}

/// `scripts/run`'s commands from sourcing `scripts/env.sh` to its `cargo build`, one per
/// line, and the binary it runs.
fn scripts_run_build() -> (Vec<String>, String) {
    let text = std::fs::read_to_string(root().join("scripts/run")).unwrap();
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    let start = lines
        .iter()
        .position(|l| *l == "source scripts/env.sh")
        .expect("scripts/run sources scripts/env.sh");
    let end = lines
        .iter()
        .position(|l| l.starts_with("cargo build"))
        .expect("scripts/run runs cargo build");
    let steps = lines[start..=end].iter().map(|l| l.to_string()).collect();
    let binary = lines
        .iter()
        .find_map(|l| l.strip_prefix("exec \""))
        .and_then(|l| l.split('"').next())
        .expect("scripts/run execs the binary")
        .to_string();
    (steps, binary)
}

#[test]
fn the_image_builds_the_binary_scripts_run_builds() {
    let (run_steps, run_binary) = scripts_run_build();
    assert!(run_binary.starts_with("$CARGO_TARGET_DIR/"), "{run_binary}");

    let text = std::fs::read_to_string(root().join("Dockerfile")).unwrap();
    // Instructions, with continuation lines joined.
    let mut instructions: Vec<String> = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with('#') || line.is_empty() {
            continue;
        }
        match line.strip_suffix('\\') {
            Some(part) => current.push_str(part),
            None => {
                current.push_str(line);
                instructions.push(std::mem::take(&mut current));
            }
        }
    }
    let builds: Vec<&String> = instructions
        .iter()
        .filter(|i| i.starts_with("RUN") && i.contains("cargo "))
        .collect();
    assert_eq!(builds.len(), 1, "one cargo step: {builds:?}");
    let script = builds[0]
        .split_once("-c '")
        .and_then(|(_, rest)| rest.split_once('\''))
        .expect("the build step is bash -c '...'")
        .0;
    let docker_steps: Vec<String> = script.split("&&").map(|s| s.trim().to_string()).collect();
    assert_eq!(
        docker_steps[..run_steps.len()],
        run_steps[..],
        "the Dockerfile's build steps differ from scripts/run's"
    );
    let after: String = docker_steps[run_steps.len()..].join(" ");
    assert!(
        after.contains(&format!("\"{run_binary}\"")),
        "the image takes {run_binary}, the binary scripts/run runs: {after}"
    );

    // The profile directory of that path is the one ENGINE_PROFILE_FLAG builds.
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new("bash")
        .arg("-c")
        .arg("source scripts/env.sh && echo \"$ENGINE_PROFILE_FLAG\"")
        .current_dir(root())
        .env("CARGO_TARGET_DIR", dir.path())
        .output()
        .unwrap();
    let flag = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let profile = match flag.as_str() {
        "--release" => "release",
        "" => "debug",
        other => other.strip_prefix("--profile ").unwrap(),
    };
    assert!(
        run_binary.starts_with(&format!("$CARGO_TARGET_DIR/{profile}/")),
        "{run_binary} with {flag}"
    );

    // Multi-stage: the final image is not the toolchain's, runs as a user of its own,
    // and starts the binary.
    let stages: Vec<&String> = instructions
        .iter()
        .filter(|i| i.starts_with("FROM "))
        .collect();
    assert!(stages.len() >= 2, "{stages:?}");
    assert!(stages[0].contains(" AS build"));
    let last = instructions
        .iter()
        .rposition(|i| i.starts_with("FROM "))
        .unwrap();
    let final_stage = &instructions[last..];
    assert!(!final_stage[0].contains("rust"), "{}", final_stage[0]);
    let user = final_stage
        .iter()
        .rev()
        .find_map(|i| i.strip_prefix("USER "))
        .expect("the image sets a USER");
    assert!(
        !user.starts_with('0') && !user.starts_with("root"),
        "runs as {user}"
    );
    assert!(
        final_stage
            .iter()
            .any(|i| i.starts_with("COPY --from=build /out/engine /usr/local/bin/engine"))
    );
    assert!(final_stage.contains(&"ENTRYPOINT [\"/usr/local/bin/engine\"]".to_string()));
    // No stage sets ENGINE_STATE_DIR: it would override the chart's state_dir.
    assert!(!text.contains("ENGINE_STATE_DIR"));
}

/// The services' values mirror the upstream charts' names for the addresses.
#[test]
fn service_values_use_the_upstream_names() {
    let mut topologies = BTreeMap::new();
    for service in SERVICES {
        let values = values_of(service);
        let kafka = &values["config"]["kafka"];
        assert!(kafka["bootstrapServers"].is_string(), "{service}");
        assert_eq!(kafka["schemaRegistryUrl"], GUIDE_REGISTRY, "{service}");
        topologies.insert(values["topology"].as_str().unwrap().to_string(), service);
    }
    // Each names a topology `engine list` prints.
    let out = engine(&["list"], &[]);
    let listed: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next().map(str::to_string))
        .collect();
    for topology in topologies.keys() {
        assert!(listed.contains(topology), "{topology} not in {listed:?}");
    }
}
