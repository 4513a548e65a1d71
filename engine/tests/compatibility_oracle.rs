//! The schema-compatibility oracle: random schema evolutions judged by the engine and by
//! Apache Avro for Java, which must agree on every pair.
//!
//! Java's verdict is `SchemaCompatibility.checkReaderWriterCompatibility`, the call
//! Confluent's registry makes for Avro. Each case is a chain of three schemas (a random
//! schema, then two rounds of random mutations: fields added and removed with and without
//! defaults, promotions and other type changes, enum symbols and defaults, unions widened
//! and narrowed, aliases, renamed types and namespaces, at any depth, inside arrays, maps
//! and unions). The newest schema is the candidate: every compatibility level, TRANSITIVE
//! ones included, must give the verdict that Java's pair verdicts imply. For each of the
//! four (reader, writer) pairs between the candidate and the older two:
//! - the engine's pair verdict equals Java's;
//! - the engine's strict decode plan exists exactly when Java says compatible, and when
//!   it does not, its error names the field path Java's incompatibility points into;
//! - data written with the writer schema decodes with the reader schema to what Java's
//!   `GenericDatumReader` produces (compared as tagged JSON).
//!
//! The Java side is `engine/tests/java/avro-oracle`, built by `scripts/test`, which sets
//! `AVRO_ORACLE_CLASSPATH`; without it the test says it was skipped.

mod avro_gen;

use std::cell::RefCell;
use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};

use apache_avro::Schema as AvroSchema;
use apache_avro::types::Value;
use engine::registry::compatibility::{self, Compatibility};
use engine::serde::avro::{DecodePlan, EncodePlan, Schema, encode_value};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestError, TestRunner};
use serde::Deserialize;
use serde_json::{Value as J, json};

/// Chains checked per run; four (reader, writer) pairs each.
const CHAINS: u32 = 2_600;

/// The Java process answering one JSON line per request.
struct Oracle {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

#[derive(Debug, Deserialize)]
struct Answer {
    compatible: Option<bool>,
    #[serde(default)]
    incompatibilities: Vec<String>,
    #[serde(default)]
    decoded: Vec<Decoded>,
    parse_error: Option<String>,
    check_error: Option<String>,
}

#[derive(Debug, Deserialize)]
struct Decoded {
    value: Option<J>,
    error: Option<String>,
}

impl Oracle {
    fn spawn(classpath: &str) -> Oracle {
        let mut child = Command::new("java")
            .args([
                "-XX:+UseSerialGC",
                "-cp",
                classpath,
                "local.streamengine.oracle.Oracle",
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start the Java Avro oracle (is `java` on the PATH?)");
        let stdin = child.stdin.take().expect("piped stdin");
        let stdout = BufReader::new(child.stdout.take().expect("piped stdout"));
        Oracle {
            child,
            stdin,
            stdout,
        }
    }

    fn ask(&mut self, reader: &J, writer: &J, data: &[Vec<u8>]) -> Answer {
        let hex: Vec<String> = data.iter().map(|d| to_hex(d)).collect();
        let request =
            json!({"reader": reader.to_string(), "writer": writer.to_string(), "data": hex});
        writeln!(self.stdin, "{request}").expect("write to the oracle");
        self.stdin.flush().expect("flush to the oracle");
        let mut line = String::new();
        let n = self
            .stdout
            .read_line(&mut line)
            .expect("read from the oracle");
        assert!(n > 0, "the Java oracle exited (see its stderr above)");
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("oracle answer {line:?}: {e}"))
    }
}

impl Drop for Oracle {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn to_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// What the run saw, so that it cannot pass by judging nothing.
#[derive(Debug, Default)]
struct Tally {
    pairs: usize,
    compatible: usize,
    incompatible: usize,
    values_compared: usize,
    java_parse_errors: usize,
    java_check_errors: usize,
    /// Pairs Java's reader decoded on a second request (see `check_pair`).
    java_reader_second_requests: usize,
}

// --- generation -----------------------------------------------------------------------

/// Where a mutation applies: a JSON pointer to a type, and what kind of type it is.
#[derive(Debug, Clone)]
struct Site {
    ptr: String,
    kind: Kind,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Record,
    Enum,
    Fixed,
    Union,
    Array,
    Map,
    Primitive,
}

fn kind_of(t: &J) -> Kind {
    match t {
        J::Array(_) => Kind::Union,
        J::String(_) => Kind::Primitive,
        J::Object(o) => match o.get("type").and_then(J::as_str) {
            Some("record") => Kind::Record,
            Some("enum") => Kind::Enum,
            Some("fixed") => Kind::Fixed,
            Some("array") => Kind::Array,
            Some("map") => Kind::Map,
            _ => Kind::Primitive,
        },
        _ => Kind::Primitive,
    }
}

fn sites(t: &J, ptr: &str, out: &mut Vec<Site>) {
    out.push(Site {
        ptr: ptr.to_owned(),
        kind: kind_of(t),
    });
    match t {
        J::Array(branches) => {
            for (i, b) in branches.iter().enumerate() {
                sites(b, &format!("{ptr}/{i}"), out);
            }
        }
        J::Object(o) => {
            if let Some(J::Array(fields)) = o.get("fields") {
                for (i, f) in fields.iter().enumerate() {
                    sites(&f["type"], &format!("{ptr}/fields/{i}/type"), out);
                }
            }
            if let Some(items) = o.get("items") {
                sites(items, &format!("{ptr}/items"), out);
            }
            if let Some(values) = o.get("values") {
                sites(values, &format!("{ptr}/values"), out);
            }
        }
        _ => {}
    }
}

/// A canonical valid default for a type (Avro's JSON encoding of a default).
fn default_for(t: &J) -> J {
    match t {
        J::Array(branches) => default_for(&branches[0]),
        J::String(s) => primitive_default(s),
        J::Object(o) => match o.get("type").and_then(J::as_str) {
            Some("record") => J::Object(
                o["fields"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|f| {
                        (
                            f["name"].as_str().unwrap_or_default().to_owned(),
                            default_for(&f["type"]),
                        )
                    })
                    .collect(),
            ),
            Some("enum") => o
                .get("default")
                .cloned()
                .unwrap_or_else(|| o["symbols"][0].clone()),
            Some("fixed") => J::String("a".repeat(o["size"].as_u64().unwrap_or(0) as usize)),
            Some("array") => json!([]),
            Some("map") => json!({}),
            Some(p) => primitive_default(p),
            None => J::Null,
        },
        _ => J::Null,
    }
}

fn primitive_default(name: &str) -> J {
    match name {
        "boolean" => json!(true),
        "int" | "long" => json!(7),
        "float" | "double" => json!(1.5),
        "bytes" | "string" => json!("x"),
        _ => J::Null,
    }
}

/// Rewrites every field default to the canonical default of the field's (possibly
/// mutated) type, and drops enum defaults that are no longer symbols, so that mutations
/// never make a schema invalid through its defaults.
fn fix_defaults(t: &mut J) {
    match t {
        J::Array(branches) => branches.iter_mut().for_each(fix_defaults),
        J::Object(o) => {
            if o.get("type").and_then(J::as_str) == Some("enum")
                && let Some(d) = o.get("default").cloned()
                && !o["symbols"].as_array().is_some_and(|s| s.contains(&d))
            {
                o.remove("default");
            }
            if let Some(J::Array(fields)) = o.get_mut("fields") {
                for f in fields {
                    fix_defaults(&mut f["type"]);
                    if f.get("default").is_some() {
                        f["default"] = default_for(&f["type"]);
                    }
                }
            }
            for key in ["items", "values"] {
                if let Some(inner) = o.get_mut(key) {
                    fix_defaults(inner);
                }
            }
        }
        _ => {}
    }
}

const PRIMITIVES: [&str; 8] = [
    "null", "boolean", "int", "long", "float", "double", "bytes", "string",
];
const NAMESPACES: [Option<&str>; 3] = [None, Some("a"), Some("b.c")];

/// One random edit. `site` and `index` pick among what exists, modulo its count.
#[derive(Debug, Clone)]
enum Mutation {
    AddField {
        site: usize,
        ty: usize,
        default: bool,
    },
    RemoveField {
        site: usize,
        index: usize,
    },
    RenameField {
        site: usize,
        index: usize,
        alias: bool,
    },
    SetFieldDefault {
        site: usize,
        index: usize,
        on: bool,
    },
    Retype {
        site: usize,
        ty: usize,
    },
    Promote {
        site: usize,
        choice: usize,
    },
    AddSymbol {
        site: usize,
    },
    RemoveSymbol {
        site: usize,
        index: usize,
    },
    SetEnumDefault {
        site: usize,
        index: Option<usize>,
    },
    Resize {
        site: usize,
        grow: bool,
    },
    RenameType {
        site: usize,
        alias: bool,
    },
    Namespace {
        site: usize,
        choice: usize,
    },
    WrapInUnion {
        site: usize,
        with: usize,
        first: bool,
    },
    AddBranch {
        site: usize,
        ty: usize,
    },
    RemoveBranch {
        site: usize,
        index: usize,
    },
    Unwrap {
        site: usize,
        index: usize,
    },
    WrapInCollection {
        site: usize,
        map: bool,
    },
}

fn mutation() -> impl Strategy<Value = Mutation> {
    let s = || any::<usize>();
    prop_oneof![
        (s(), 0..PRIMITIVES.len() + 2, any::<bool>())
            .prop_map(|(site, ty, default)| Mutation::AddField { site, ty, default }),
        (s(), s()).prop_map(|(site, index)| Mutation::RemoveField { site, index }),
        (s(), s(), any::<bool>()).prop_map(|(site, index, alias)| Mutation::RenameField {
            site,
            index,
            alias
        }),
        (s(), s(), any::<bool>()).prop_map(|(site, index, on)| Mutation::SetFieldDefault {
            site,
            index,
            on
        }),
        (s(), 0..PRIMITIVES.len()).prop_map(|(site, ty)| Mutation::Retype { site, ty }),
        (s(), s()).prop_map(|(site, choice)| Mutation::Promote { site, choice }),
        s().prop_map(|site| Mutation::AddSymbol { site }),
        (s(), s()).prop_map(|(site, index)| Mutation::RemoveSymbol { site, index }),
        (s(), prop::option::of(s()))
            .prop_map(|(site, index)| Mutation::SetEnumDefault { site, index }),
        (s(), any::<bool>()).prop_map(|(site, grow)| Mutation::Resize { site, grow }),
        (s(), any::<bool>()).prop_map(|(site, alias)| Mutation::RenameType { site, alias }),
        (s(), 0..NAMESPACES.len()).prop_map(|(site, choice)| Mutation::Namespace { site, choice }),
        (s(), 0..PRIMITIVES.len(), any::<bool>())
            .prop_map(|(site, with, first)| Mutation::WrapInUnion { site, with, first }),
        (s(), 0..PRIMITIVES.len()).prop_map(|(site, ty)| Mutation::AddBranch { site, ty }),
        (s(), s()).prop_map(|(site, index)| Mutation::RemoveBranch { site, index }),
        (s(), s()).prop_map(|(site, index)| Mutation::Unwrap { site, index }),
        (s(), any::<bool>()).prop_map(|(site, map)| Mutation::WrapInCollection { site, map }),
    ]
}

fn pick<'a>(all: &'a [Site], kinds: &[Kind], n: usize) -> Option<&'a Site> {
    let matching: Vec<&Site> = all.iter().filter(|s| kinds.contains(&s.kind)).collect();
    (!matching.is_empty()).then(|| matching[n % matching.len()])
}

/// A type for a new field or branch: a primitive, or a small named type.
fn new_type(ty: usize, fresh: &str) -> J {
    match ty {
        t if t < PRIMITIVES.len() => json!(PRIMITIVES[t]),
        t if t == PRIMITIVES.len() => {
            json!({"type": "enum", "name": format!("E{fresh}"), "symbols": ["S0", "S1"]})
        }
        _ => json!({"type": "record", "name": format!("R{fresh}"), "fields": [
            {"name": "x", "type": "int"}]}),
    }
}

/// Whether two union branches would be duplicates: the same name, or for unnamed types
/// the same underlying type (Java refuses `["long", {"type": "long", "logicalType": ..}]`).
fn same_branch_type(a: &J, b: &J) -> bool {
    fn key(t: &J) -> Option<String> {
        match t {
            J::String(s) => Some(s.clone()),
            J::Object(o) => match o.get("name") {
                Some(name) => Some(format!("named {name}")),
                None => o.get("type").and_then(J::as_str).map(str::to_owned),
            },
            _ => None,
        }
    }
    key(a).is_some() && key(a) == key(b)
}

/// The type at `site`, which was collected from this very tree.
fn target<'a>(schema: &'a mut J, site: &Site) -> &'a mut J {
    schema.pointer_mut(&site.ptr).expect("site exists")
}

/// Applies `m` to `schema`; `tag` makes fresh names unique across the chain.
fn apply(schema: &mut J, m: &Mutation, tag: &str) {
    let mut all = Vec::new();
    sites(schema, "", &mut all);
    match *m {
        Mutation::AddField { site, ty, default } => {
            if let Some(s) = pick(&all, &[Kind::Record], site) {
                let t = new_type(ty, tag);
                let mut field = json!({"name": format!("g{tag}"), "type": t});
                if default {
                    field["default"] = default_for(&field["type"]);
                }
                if let Some(J::Array(fields)) = target(schema, s).get_mut("fields") {
                    fields.push(field);
                }
            }
        }
        Mutation::RemoveField { site, index } => {
            if let Some(s) = pick(&all, &[Kind::Record], site)
                && let Some(J::Array(fields)) = target(schema, s).get_mut("fields")
                && !fields.is_empty()
            {
                let n = fields.len();
                fields.remove(index % n);
            }
        }
        Mutation::RenameField { site, index, alias } => {
            if let Some(s) = pick(&all, &[Kind::Record], site)
                && let Some(J::Array(fields)) = target(schema, s).get_mut("fields")
                && !fields.is_empty()
            {
                let n = fields.len();
                let f = &mut fields[index % n];
                let old = f["name"].clone();
                f["name"] = json!(format!("h{tag}"));
                if alias {
                    f["aliases"] = json!([old]);
                }
            }
        }
        Mutation::SetFieldDefault { site, index, on } => {
            if let Some(s) = pick(&all, &[Kind::Record], site)
                && let Some(J::Array(fields)) = target(schema, s).get_mut("fields")
                && !fields.is_empty()
            {
                let n = fields.len();
                let f = &mut fields[index % n];
                if on {
                    f["default"] = default_for(&f["type"]);
                } else if let Some(o) = f.as_object_mut() {
                    o.remove("default");
                }
            }
        }
        Mutation::Retype { site, ty } => {
            let s = &all[site % all.len()];
            if !s.ptr.is_empty() {
                *target(schema, s) = json!(PRIMITIVES[ty]);
            }
        }
        Mutation::Promote { site, choice } => {
            if let Some(s) = pick(&all, &[Kind::Primitive], site) {
                let t = target(schema, s);
                let to: &[&str] = match t.as_str() {
                    Some("int") => &["long", "float", "double"],
                    Some("long") => &["float", "double", "int"],
                    Some("float") => &["double", "long"],
                    Some("double") => &["float"],
                    Some("string") => &["bytes"],
                    Some("bytes") => &["string"],
                    _ => &[],
                };
                if !to.is_empty() {
                    *t = json!(to[choice % to.len()]);
                }
            }
        }
        Mutation::AddSymbol { site } => {
            if let Some(s) = pick(&all, &[Kind::Enum], site)
                && let Some(J::Array(symbols)) = target(schema, s).get_mut("symbols")
            {
                symbols.push(json!(format!("Z{tag}")));
            }
        }
        Mutation::RemoveSymbol { site, index } => {
            if let Some(s) = pick(&all, &[Kind::Enum], site)
                && let Some(J::Array(symbols)) = target(schema, s).get_mut("symbols")
                && symbols.len() > 1
            {
                let n = symbols.len();
                symbols.remove(index % n);
            }
        }
        Mutation::SetEnumDefault { site, index } => {
            if let Some(s) = pick(&all, &[Kind::Enum], site) {
                let e = target(schema, s);
                match index {
                    Some(i) => {
                        let symbols = e["symbols"].as_array().cloned().unwrap_or_default();
                        if !symbols.is_empty() {
                            e["default"] = symbols[i % symbols.len()].clone();
                        }
                    }
                    None => {
                        if let Some(o) = e.as_object_mut() {
                            o.remove("default");
                        }
                    }
                }
            }
        }
        Mutation::Resize { site, grow } => {
            if let Some(s) = pick(&all, &[Kind::Fixed], site) {
                let f = target(schema, s);
                let size = f["size"].as_u64().unwrap_or(0);
                f["size"] = json!(if grow {
                    size + 1
                } else {
                    size.saturating_sub(1)
                });
            }
        }
        Mutation::RenameType { site, alias } => {
            if let Some(s) = pick(&all, &[Kind::Record, Kind::Enum, Kind::Fixed], site) {
                let t = target(schema, s);
                let old = full_name(t);
                t["name"] = json!(format!("T{tag}"));
                if alias {
                    t["aliases"] = json!([old]);
                }
            }
        }
        Mutation::Namespace { site, choice } => {
            if let Some(s) = pick(&all, &[Kind::Record, Kind::Enum, Kind::Fixed], site)
                && let Some(o) = target(schema, s).as_object_mut()
            {
                match NAMESPACES[choice] {
                    Some(ns) => {
                        o.insert("namespace".into(), json!(ns));
                    }
                    None => {
                        o.remove("namespace");
                    }
                }
            }
        }
        Mutation::WrapInUnion { site, with, first } => {
            let s = &all[site % all.len()];
            let parent_is_union = s.ptr.rsplit_once('/').is_some_and(|(parent, last)| {
                last.parse::<usize>().is_ok() && !parent.ends_with("fields")
            });
            if !s.ptr.is_empty() && s.kind != Kind::Union && !parent_is_union {
                let t = target(schema, s);
                let other = json!(PRIMITIVES[with]);
                if !same_branch_type(t, &other) {
                    let old = t.take();
                    *t = if first {
                        json!([other, old])
                    } else {
                        json!([old, other])
                    };
                }
            }
        }
        Mutation::AddBranch { site, ty } => {
            if let Some(s) = pick(&all, &[Kind::Union], site)
                && let J::Array(branches) = target(schema, s)
            {
                let t = json!(PRIMITIVES[ty]);
                if !branches.iter().any(|b| same_branch_type(b, &t)) {
                    branches.push(t);
                }
            }
        }
        Mutation::RemoveBranch { site, index } => {
            if let Some(s) = pick(&all, &[Kind::Union], site)
                && let J::Array(branches) = target(schema, s)
                && branches.len() > 1
            {
                let n = branches.len();
                branches.remove(index % n);
            }
        }
        Mutation::Unwrap { site, index } => {
            if let Some(s) = pick(&all, &[Kind::Union], site)
                && !s.ptr.is_empty()
            {
                let t = target(schema, s);
                if let J::Array(branches) = t {
                    let n = branches.len();
                    let b = branches.swap_remove(index % n);
                    *t = b;
                }
            }
        }
        Mutation::WrapInCollection { site, map } => {
            let s = &all[site % all.len()];
            if !s.ptr.is_empty() {
                let t = target(schema, s);
                let old = t.take();
                *t = if map {
                    json!({"type": "map", "values": old})
                } else {
                    json!({"type": "array", "items": old})
                };
            }
        }
    }
    fix_defaults(schema);
}

fn full_name(t: &J) -> String {
    let name = t["name"].as_str().unwrap_or_default();
    match t.get("namespace").and_then(J::as_str) {
        Some(ns) if !name.contains('.') => format!("{ns}.{name}"),
        _ => name.to_owned(),
    }
}

/// Decorations on the random base schema, so that the writer already has namespaces,
/// defaults, enum defaults and aliases for the mutations to meet.
#[derive(Debug, Clone)]
struct Decoration {
    site: usize,
    what: u8,
}

fn decorate(schema: &mut J, d: &Decoration, tag: &str) {
    let mut all = Vec::new();
    sites(schema, "", &mut all);
    let named: Vec<&Site> = all
        .iter()
        .filter(|s| matches!(s.kind, Kind::Record | Kind::Enum | Kind::Fixed))
        .collect();
    let records: Vec<&Site> = all.iter().filter(|s| s.kind == Kind::Record).collect();
    match d.what % 4 {
        0 if !named.is_empty() => {
            let s = named[d.site % named.len()];
            let ns = NAMESPACES[1 + d.site % 2].expect("a namespace");
            schema.pointer_mut(&s.ptr).expect("site")["namespace"] = json!(ns);
        }
        1 => {
            let s = records[d.site % records.len()];
            if let Some(J::Array(fields)) =
                schema.pointer_mut(&s.ptr).expect("site").get_mut("fields")
                && !fields.is_empty()
            {
                let n = fields.len();
                let f = &mut fields[d.site / 7 % n];
                f["default"] = default_for(&f["type"]);
            }
        }
        2 => {
            if let Some(s) = pick(&all, &[Kind::Enum], d.site) {
                let e = schema.pointer_mut(&s.ptr).expect("site");
                let first = e["symbols"][0].clone();
                e["default"] = first;
            }
        }
        _ => {
            let s = records[d.site % records.len()];
            if let Some(J::Array(fields)) =
                schema.pointer_mut(&s.ptr).expect("site").get_mut("fields")
                && !fields.is_empty()
            {
                let n = fields.len();
                fields[d.site / 7 % n]["aliases"] = json!([format!("alias{tag}")]);
            }
        }
    }
    fix_defaults(schema);
}

/// Applies mutations one by one, keeping only those that leave a valid schema: one that
/// apache-avro (and so the engine) parses, without the unions apache-avro accepts but
/// Java refuses (two branches of one underlying type). An invalid schema is refused at
/// registration, which is not what this oracle checks.
fn evolve(from: &J, muts: &[Mutation], step: usize) -> J {
    let mut schema = from.clone();
    for (k, m) in muts.iter().enumerate() {
        let mut next = schema.clone();
        apply(&mut next, m, &format!("{step}x{k}"));
        if valid(&next) {
            schema = next;
        }
    }
    schema
}

fn valid(t: &J) -> bool {
    Schema::parse_str(&t.to_string()).is_ok() && unions_valid(t)
}

fn unions_valid(t: &J) -> bool {
    match t {
        J::Array(branches) => {
            branches
                .iter()
                .enumerate()
                .all(|(i, a)| branches[..i].iter().all(|b| !same_branch_type(a, b)))
                && branches.iter().all(unions_valid)
        }
        J::Object(o) => {
            o.get("fields")
                .and_then(J::as_array)
                .into_iter()
                .flatten()
                .all(|f| unions_valid(&f["type"]))
                && ["items", "values"]
                    .iter()
                    .all(|k| o.get(*k).is_none_or(unions_valid))
        }
        _ => true,
    }
}

#[derive(Debug, Clone)]
struct Chain {
    schemas: [J; 3],
    /// Datums written with each schema.
    data: [Vec<Vec<u8>>; 3],
}

fn chain() -> impl Strategy<Value = Chain> {
    (
        avro_gen::schema_json(),
        prop::collection::vec(
            (any::<usize>(), any::<u8>()).prop_map(|(site, what)| Decoration { site, what }),
            0..4,
        ),
        prop::collection::vec(mutation(), 1..4),
        prop::collection::vec(mutation(), 1..4),
    )
        .prop_map(|(base, decorations, first, second)| {
            let mut s0 = base;
            for (k, d) in decorations.iter().enumerate() {
                let before = s0.clone();
                decorate(&mut s0, d, &format!("d{k}"));
                if !valid(&s0) {
                    s0 = before;
                }
            }
            let s1 = evolve(&s0, &first, 1);
            let s2 = evolve(&s1, &second, 2);
            [s0, s1, s2]
        })
        .prop_flat_map(|schemas| {
            let datums = |j: &J| {
                let s = AvroSchema::parse(j).expect("evolve keeps parseable schemas");
                prop::collection::vec(avro_gen::text_value_for(&s), 2..=2)
            };
            let strategies = (
                datums(&schemas[0]),
                datums(&schemas[1]),
                datums(&schemas[2]),
            );
            (Just(schemas), strategies)
        })
        .prop_map(|(schemas, (v0, v1, v2))| {
            let encode = |j: &J, values: Vec<Value>| -> Vec<Vec<u8>> {
                let schema = Schema::parse_str(&j.to_string()).expect("parses");
                let plan = EncodePlan::new(&schema).expect("encode plan");
                values
                    .into_iter()
                    .map(|v| {
                        let mut out = Vec::new();
                        encode_value(&plan, &v, &mut out).expect("generated value encodes");
                        out
                    })
                    .collect()
            };
            let data = [
                encode(&schemas[0], v0),
                encode(&schemas[1], v1),
                encode(&schemas[2], v2),
            ];
            Chain { schemas, data }
        })
}

// --- comparison -----------------------------------------------------------------------

/// The engine's decoded value in the oracle's tagged JSON (see Oracle.java).
fn tagged(v: &Value, schema: &AvroSchema) -> J {
    use AvroSchema as S;
    match (v, schema) {
        (Value::Union(i, inner), S::Union(u)) => {
            json!({"$branch": i, "value": tagged(inner, &u.variants()[*i as usize])})
        }
        (Value::Null, _) => J::Null,
        (Value::Boolean(b), _) => json!(b),
        (Value::Int(i) | Value::Date(i) | Value::TimeMillis(i), _) => json!(i),
        (
            Value::Long(i)
            | Value::TimeMicros(i)
            | Value::TimestampMillis(i)
            | Value::TimestampMicros(i)
            | Value::TimestampNanos(i)
            | Value::LocalTimestampMillis(i)
            | Value::LocalTimestampMicros(i)
            | Value::LocalTimestampNanos(i),
            _,
        ) => json!(i),
        (Value::Float(f), _) => double_bits(f64::from(*f)),
        (Value::Double(f), _) => double_bits(*f),
        (Value::String(s), _) => json!(s),
        (Value::Uuid(u), _) => json!(u.to_string()),
        (Value::Bytes(b), _) => json!({"$bytes": to_hex(b)}),
        (Value::Fixed(_, b), _) => json!({"$fixed": to_hex(b)}),
        (Value::Decimal(d), S::Decimal(inner)) => {
            // apache-avro keeps a decimal's byte length, so this gives back the bytes read;
            // it refuses a length of 0, which only the empty (zero) decimal has.
            let bytes = match Vec::<u8>::try_from(d) {
                Ok(bytes) => bytes,
                Err(_) if *d == apache_avro::Decimal::from(Vec::<u8>::new()) => Vec::new(),
                Err(e) => panic!("decimal bytes: {e}"),
            };
            match *inner.inner {
                S::Fixed(_) => json!({"$fixed": to_hex(&bytes)}),
                _ => json!({"$bytes": to_hex(&bytes)}),
            }
        }
        (Value::Enum(_, symbol), _) => json!({"$enum": symbol}),
        (Value::Array(items), S::Array(a)) => {
            J::Array(items.iter().map(|i| tagged(i, &a.items)).collect())
        }
        (Value::Map(m), S::Map(s)) => J::Object(
            m.iter()
                .map(|(k, v)| (k.clone(), tagged(v, &s.types)))
                .collect(),
        ),
        (Value::Record(fields), S::Record(r)) => J::Object(
            fields
                .iter()
                .map(|(name, v)| {
                    let f = r
                        .fields
                        .iter()
                        .find(|f| &f.name == name)
                        .expect("decoded field is a reader field");
                    (name.clone(), tagged(v, &f.schema))
                })
                .collect(),
        ),
        (other, s) => json!({"$unexpected": format!("{other:?} for {s:?}")}),
    }
}

fn double_bits(d: f64) -> J {
    json!({"$double": format!("{:016x}", d.to_bits())})
}

/// Short name -> full name of every named type in `t`.
fn full_names(t: &J, namespace: Option<&str>, out: &mut Vec<(String, String)>) {
    match t {
        J::Array(branches) => branches.iter().for_each(|b| full_names(b, namespace, out)),
        J::Object(o) => {
            let mut inner = namespace.map(str::to_owned);
            if let Some(name) = o.get("name").and_then(J::as_str) {
                let full = match (
                    name.rsplit_once('.'),
                    o.get("namespace").and_then(J::as_str),
                ) {
                    (Some(_), _) => name.to_owned(),
                    (None, Some("")) => name.to_owned(),
                    (None, Some(ns)) => format!("{ns}.{name}"),
                    (None, None) => match namespace {
                        Some(ns) => format!("{ns}.{name}"),
                        None => name.to_owned(),
                    },
                };
                let short = full.rsplit('.').next().unwrap_or_default().to_owned();
                inner = full.rsplit_once('.').map(|(ns, _)| ns.to_owned());
                out.push((short, full));
            }
            for f in o.get("fields").and_then(J::as_array).into_iter().flatten() {
                full_names(&f["type"], inner.as_deref(), out);
            }
            for key in ["items", "values"] {
                if let Some(x) = o.get(key) {
                    full_names(x, inner.as_deref(), out);
                }
            }
        }
        _ => {}
    }
}

/// Whether a named type of the reader and one of the writer share a short name but not
/// a namespace.
fn namespaces_differ(reader: &J, writer: &J) -> bool {
    let (mut r, mut w) = (Vec::new(), Vec::new());
    full_names(reader, None, &mut r);
    full_names(writer, None, &mut w);
    r.iter()
        .any(|(rs, rf)| w.iter().any(|(ws, wf)| rs == ws && rf != wf))
}

/// `t` with every namespace dropped: names and aliases unqualified.
fn without_namespaces(t: &J) -> J {
    match t {
        J::Array(items) => J::Array(items.iter().map(without_namespaces).collect()),
        J::Object(o) => J::Object(
            o.iter()
                .filter(|(k, _)| *k != "namespace")
                .map(|(k, v)| {
                    let v = match (k.as_str(), v) {
                        ("name", J::String(n)) => json!(n.rsplit('.').next().unwrap_or_default()),
                        ("aliases", J::Array(a)) => J::Array(
                            a.iter()
                                .map(|x| json!(x.as_str().unwrap_or_default().rsplit('.').next()))
                                .collect(),
                        ),
                        (_, v) => without_namespaces(v),
                    };
                    (k.clone(), v)
                })
                .collect(),
        ),
        other => other.clone(),
    }
}

/// `t` without field defaults.
fn without_defaults(t: &J) -> J {
    let mut t = t.clone();
    strip_defaults(&mut t);
    t
}

fn strip_defaults(t: &mut J) {
    match t {
        J::Array(branches) => branches.iter_mut().for_each(strip_defaults),
        J::Object(o) => {
            if let Some(J::Array(fields)) = o.get_mut("fields") {
                for f in fields {
                    if let Some(f) = f.as_object_mut() {
                        f.remove("default");
                        if let Some(ty) = f.get_mut("type") {
                            strip_defaults(ty);
                        }
                    }
                }
            }
            for key in ["items", "values"] {
                if let Some(inner) = o.get_mut(key) {
                    strip_defaults(inner);
                }
            }
        }
        _ => {}
    }
}

/// Whether every incompatibility Java found lies inside a record field (so that any one
/// the engine finds first has a field path).
fn java_points_into_fields(incompatibilities: &[String]) -> bool {
    !incompatibilities.is_empty() && incompatibilities.iter().all(|i| i.contains("/fields/"))
}

fn check_pair(
    oracle: &mut Oracle,
    tally: &mut Tally,
    reader_json: &J,
    writer_json: &J,
    data: &[Vec<u8>],
) -> Result<Option<bool>, TestCaseError> {
    let answer = oracle.ask(reader_json, writer_json, data);
    if let Some(e) = &answer.parse_error {
        // apache-avro accepts, and the generator avoids, unions Java refuses; the test
        // fails if more than a few slip through.
        if tally.java_parse_errors < 3 {
            eprintln!(
                "Java refuses a schema apache-avro parses: {e}\n{reader_json}\n{writer_json}"
            );
        }
        tally.java_parse_errors += 1;
        return Ok(None);
    }
    if answer.check_error.is_some() {
        tally.java_check_errors += 1;
        return Ok(None);
    }
    let java = answer.compatible.expect("a verdict");
    tally.pairs += 1;
    if java {
        tally.compatible += 1;
    } else {
        tally.incompatible += 1;
    }
    let reader = Schema::parse_str(&reader_json.to_string()).expect("parses");
    let writer = Schema::parse_str(&writer_json.to_string()).expect("parses");
    let context = || {
        format!(
            "\nreader: {reader_json}\nwriter: {writer_json}\nJava: {}",
            if java {
                "compatible".to_owned()
            } else {
                answer.incompatibilities.join("; ")
            }
        )
    };

    let report = compatibility::check(Compatibility::Backward, reader.inner(), &[writer.inner()]);
    prop_assert_eq!(
        report.is_compatible,
        java,
        "the engine's verdict ({:?}) differs from Java's{}",
        report.messages,
        context()
    );

    let plan = DecodePlan::strict(&writer, &reader);
    match (&plan, java) {
        (Ok(_), true) => {}
        (Err(e), false) => {
            if java_points_into_fields(&answer.incompatibilities) {
                prop_assert!(
                    e.path().is_some_and(|p| !p.is_empty()),
                    "the strict plan's refusal names no field path: {}{}",
                    e,
                    context()
                );
            }
        }
        (Ok(_), false) => prop_assert!(
            false,
            "the strict plan accepts an incompatible pair{}",
            context()
        ),
        (Err(e), true) => prop_assert!(
            false,
            "the strict plan refuses a compatible pair: {}{}",
            e,
            context()
        ),
    }

    // Two defects of Java's GenericDatumReader that its checker does not share get a
    // second request whose changes cannot alter what the data means:
    // - it compares full names where the checker (and the Avro specification, and the
    //   engine) compare unqualified names: for types that differ only in namespace it
    //   refuses the data, or skips field aliases and reads defaults instead. Asked again
    //   with namespaces removed from both schemas.
    // - applying the reader's field aliases to the writer, it leaves the writer's record
    //   defaults naming the old fields, then refuses them as invalid ("Invalid default
    //   for field"). A writer's defaults play no part in reading: asked again without.
    let mut decoded = answer.decoded;
    let namespaces = namespaces_differ(reader_json, writer_json);
    let writer_defaults = decoded.iter().any(|d| {
        d.error
            .as_deref()
            .is_some_and(|e| e.contains("Invalid default for field"))
    });
    if java && (namespaces || writer_defaults) {
        let plain = |j: &J| {
            if namespaces {
                without_namespaces(j)
            } else {
                j.clone()
            }
        };
        tally.java_reader_second_requests += 1;
        let again = oracle.ask(
            &plain(reader_json),
            &without_defaults(&plain(writer_json)),
            data,
        );
        prop_assert_eq!(
            again.compatible,
            Some(true),
            "Java judges the second request differently: {:?}{}",
            again,
            context()
        );
        decoded = again.decoded;
    }
    if let Ok(plan) = plan {
        for (datum, theirs) in data.iter().zip(&decoded) {
            let ours = plan.decode_value(datum);
            match (&ours, &theirs.value) {
                (Ok(v), Some(j)) => {
                    tally.values_compared += 1;
                    let mine = tagged(v, reader.inner());
                    prop_assert_eq!(
                        &mine,
                        j,
                        "decoded values differ for datum {}{}",
                        to_hex(datum),
                        context()
                    );
                }
                (Ok(_), None) => prop_assert!(
                    false,
                    "Java cannot decode datum {} of a pair it calls compatible: {:?}{}",
                    to_hex(datum),
                    theirs.error,
                    context()
                ),
                (Err(e), _) => prop_assert!(
                    false,
                    "the engine cannot decode datum {} of a compatible pair: {} (Java: {:?}){}",
                    to_hex(datum),
                    e,
                    theirs,
                    context()
                ),
            }
        }
    }
    Ok(Some(java))
}

fn check_chain(oracle: &mut Oracle, tally: &mut Tally, c: &Chain) -> Result<(), TestCaseError> {
    let [s0, s1, s2] = &c.schemas;
    // Java's pair verdicts between the candidate s2 and the existing s0, s1.
    let reads_old0 = check_pair(oracle, tally, s2, s0, &c.data[0])?;
    let old0_reads = check_pair(oracle, tally, s0, s2, &c.data[2])?;
    let reads_old1 = check_pair(oracle, tally, s2, s1, &c.data[1])?;
    let old1_reads = check_pair(oracle, tally, s1, s2, &c.data[2])?;
    let (Some(reads_old0), Some(old0_reads), Some(reads_old1), Some(old1_reads)) =
        (reads_old0, old0_reads, reads_old1, old1_reads)
    else {
        return Ok(());
    };
    let parsed: Vec<Schema> = c
        .schemas
        .iter()
        .map(|j| Schema::parse_str(&j.to_string()).expect("parses"))
        .collect();
    for level in Compatibility::ALL {
        let expected = match level {
            Compatibility::Backward => reads_old1,
            Compatibility::BackwardTransitive => reads_old1 && reads_old0,
            Compatibility::Forward => old1_reads,
            Compatibility::ForwardTransitive => old1_reads && old0_reads,
            Compatibility::Full => reads_old1 && old1_reads,
            Compatibility::FullTransitive => reads_old1 && old1_reads && reads_old0 && old0_reads,
            Compatibility::None => true,
        };
        let report = compatibility::check(
            level,
            parsed[2].inner(),
            &[parsed[0].inner(), parsed[1].inner()],
        );
        prop_assert_eq!(
            report.is_compatible,
            expected,
            "{}: the engine says {:?}, Java's pair verdicts imply {}\nv1: {}\nv2: {}\nv3 (new): {}",
            level,
            report.messages,
            expected,
            s0,
            s1,
            s2
        );
    }
    Ok(())
}

#[test]
fn engine_compatibility_and_resolution_agree_with_java_avro() {
    let Ok(classpath) = std::env::var("AVRO_ORACLE_CLASSPATH") else {
        eprintln!(
            "skipped: the Java Avro oracle (scripts/test builds it and sets AVRO_ORACLE_CLASSPATH)"
        );
        return;
    };
    let chains = std::env::var("AVRO_ORACLE_CHAINS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(CHAINS);
    let oracle = RefCell::new(Oracle::spawn(&classpath));
    let tally = RefCell::new(Tally::default());
    let mut runner = TestRunner::new(Config {
        cases: chains,
        failure_persistence: None,
        ..Config::default()
    });
    let result = runner.run(&chain(), |c| {
        check_chain(&mut oracle.borrow_mut(), &mut tally.borrow_mut(), &c)
    });
    let tally = tally.into_inner();
    eprintln!("{tally:#?}");
    match result {
        Ok(()) => {}
        Err(TestError::Fail(reason, c)) => {
            panic!("{reason}\n(minimal failing chain: {:?})", c.schemas)
        }
        Err(e) => panic!("{e}"),
    }
    // The run must have judged enough pairs, and plenty of each verdict.
    assert!(tally.pairs >= 10_000 || chains < CHAINS, "{tally:?}");
    assert!(
        tally.compatible * 5 >= tally.pairs,
        "too few compatible pairs: {tally:?}"
    );
    assert!(
        tally.incompatible * 5 >= tally.pairs,
        "too few incompatible pairs: {tally:?}"
    );
    assert!(tally.values_compared >= tally.compatible, "{tally:?}");
    assert!(tally.java_parse_errors * 1000 <= tally.pairs, "{tally:?}");
}
