//! `MemoryRegistry`: the registry's data and Confluent's rules, kept in memory; and
//! `MockRegistries`, the caller-owned directory of `mock://SCOPE` registries.
//!
//! Depends on `super::{compatibility, error}` and `apache_avro` for parsing. No I/O and no
//! async: the state sits behind a `std::sync::Mutex` that is only held for the few
//! microseconds of a lookup or insert (never across an `.await`), so both the blocking
//! client and the axum server can call it directly.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};

use apache_avro::Schema;

use super::compatibility::{self, Compatibility, CompatibilityReport};
use super::error::{RegistryError, Result};
use super::{SubjectVersion, VersionRef};

/// An in-process schema registry with Confluent semantics.
///
/// - ids are global: the same schema gets the same id in every subject;
/// - re-registering a schema a subject already has returns its id without a new version;
/// - versions start at 1;
/// - new versions are checked against the subject's level, falling back to the global
///   level (default `BACKWARD`).
///
/// "Same schema" means the same parsed schema re-serialized to compact JSON: whitespace and
/// key order do not matter, but defaults, aliases and docs do. Avro's Parsing Canonical Form
/// would be too coarse here because it drops defaults, which compatibility depends on.
#[derive(Debug, Default)]
pub struct MemoryRegistry {
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    /// Index `i` holds schema id `i + 1`; ids are never reused or removed.
    schemas: Vec<StoredSchema>,
    ids_by_form: HashMap<String, i32>,
    subjects: BTreeMap<String, SubjectState>,
    global: Compatibility,
}

#[derive(Debug)]
struct StoredSchema {
    text: Arc<str>,
    parsed: Schema,
}

#[derive(Debug, Default)]
struct SubjectState {
    /// Schema id of version `i + 1`. Empty after a delete; the entry is kept so that a
    /// subject-level compatibility override survives, as in Confluent.
    versions: Vec<i32>,
    level: Option<Compatibility>,
}

/// A parsed candidate schema and its identity key.
struct Candidate {
    parsed: Schema,
    form: String,
}

fn parse(schema: &str) -> Result<Candidate> {
    let parsed = Schema::parse_str(schema).map_err(|e| RegistryError::InvalidSchema {
        reason: e.to_string(),
    })?;
    // Serializing an already-parsed schema cannot fail in practice; falling back to the
    // canonical form keeps this total without an unwrap.
    let form = serde_json::to_string(&parsed).unwrap_or_else(|_| parsed.canonical_form());
    Ok(Candidate { parsed, form })
}

fn version_number(index: usize) -> i32 {
    // Version counts are bounded by memory long before i32::MAX.
    i32::try_from(index + 1).unwrap_or(i32::MAX)
}

impl State {
    fn stored(&self, id: i32) -> Option<&StoredSchema> {
        usize::try_from(id)
            .ok()
            .and_then(|i| i.checked_sub(1))
            .and_then(|i| self.schemas.get(i))
    }

    fn live_subject(&self, subject: &str) -> Result<&SubjectState> {
        self.subjects
            .get(subject)
            .filter(|s| !s.versions.is_empty())
            .ok_or_else(|| RegistryError::SubjectNotFound {
                subject: subject.to_owned(),
            })
    }

    fn level_of(&self, subject: &str) -> Compatibility {
        self.subjects
            .get(subject)
            .and_then(|s| s.level)
            .unwrap_or(self.global)
    }

    fn parsed_versions(&self, subject: &str) -> Vec<&Schema> {
        self.subjects
            .get(subject)
            .map(|s| {
                s.versions
                    .iter()
                    .filter_map(|id| self.stored(*id).map(|st| &st.parsed))
                    .collect()
            })
            .unwrap_or_default()
    }

    fn subject_version(&self, subject: &str, index: usize, id: i32) -> Result<SubjectVersion> {
        let stored = self.stored(id).ok_or_else(|| RegistryError::Store {
            reason: format!("subject `{subject}` refers to missing schema id {id}"),
        })?;
        Ok(SubjectVersion {
            subject: subject.to_owned(),
            id,
            version: version_number(index),
            schema: stored.text.to_string(),
        })
    }
}

impl MemoryRegistry {
    /// An empty registry with global level `BACKWARD`.
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty registry with the given global level.
    pub fn with_compatibility(global: Compatibility) -> Self {
        Self {
            state: Mutex::new(State {
                global,
                ..State::default()
            }),
        }
    }

    fn lock(&self) -> Result<MutexGuard<'_, State>> {
        self.state.lock().map_err(|_| RegistryError::Store {
            reason: "registry state lock poisoned by a panic in another thread; restart the \
                     process"
                .to_owned(),
        })
    }

    /// Registers `schema` under `subject` and returns its global id.
    pub fn register(&self, subject: &str, schema: &str) -> Result<i32> {
        let candidate = parse(schema)?;
        let mut state = self.lock()?;
        let known_id = state.ids_by_form.get(&candidate.form).copied();
        if let (Some(id), Some(existing)) = (known_id, state.subjects.get(subject))
            && existing.versions.contains(&id)
        {
            return Ok(id);
        }
        let level = state.level_of(subject);
        if level != Compatibility::None {
            let report =
                compatibility::check(level, &candidate.parsed, &state.parsed_versions(subject));
            if !report.is_compatible {
                tracing::debug!(subject, %level, messages = ?report.messages, "schema rejected as incompatible");
                return Err(RegistryError::Incompatible {
                    subject: subject.to_owned(),
                    level: Some(level),
                    messages: report.messages,
                });
            }
        }
        let id = match known_id {
            Some(id) => id,
            None => {
                let id = version_number(state.schemas.len());
                state.schemas.push(StoredSchema {
                    text: Arc::from(schema),
                    parsed: candidate.parsed,
                });
                state.ids_by_form.insert(candidate.form, id);
                id
            }
        };
        let entry = state.subjects.entry(subject.to_owned()).or_default();
        entry.versions.push(id);
        tracing::debug!(
            subject,
            id,
            version = entry.versions.len(),
            "schema registered"
        );
        Ok(id)
    }

    /// Finds `schema` among `subject`'s versions (40401 if no subject, 40403 if absent).
    pub fn lookup(&self, subject: &str, schema: &str) -> Result<SubjectVersion> {
        let candidate = parse(schema)?;
        let state = self.lock()?;
        let versions = &state.live_subject(subject)?.versions;
        let found = state
            .ids_by_form
            .get(&candidate.form)
            .and_then(|id| versions.iter().position(|v| v == id).map(|i| (i, *id)));
        match found {
            Some((index, id)) => state.subject_version(subject, index, id),
            None => Err(RegistryError::SchemaNotFound {
                what: format!("under subject `{subject}`"),
            }),
        }
    }

    /// The schema text registered under `id` (40403 if unknown).
    pub fn schema_by_id(&self, id: i32) -> Result<Arc<str>> {
        let state = self.lock()?;
        state
            .stored(id)
            .map(|s| Arc::clone(&s.text))
            .ok_or_else(|| RegistryError::SchemaNotFound {
                what: format!("id {id}"),
            })
    }

    /// Every `(subject, version)` that uses schema `id` (40403 if unknown).
    pub fn subject_versions_of_id(&self, id: i32) -> Result<Vec<(String, i32)>> {
        let state = self.lock()?;
        if state.stored(id).is_none() {
            return Err(RegistryError::SchemaNotFound {
                what: format!("id {id}"),
            });
        }
        Ok(state
            .subjects
            .iter()
            .flat_map(|(name, s)| {
                s.versions
                    .iter()
                    .enumerate()
                    .filter(|(_, v)| **v == id)
                    .map(|(i, _)| (name.clone(), version_number(i)))
            })
            .collect())
    }

    /// Subjects with at least one version, sorted.
    pub fn subjects(&self) -> Result<Vec<String>> {
        let state = self.lock()?;
        Ok(state
            .subjects
            .iter()
            .filter(|(_, s)| !s.versions.is_empty())
            .map(|(name, _)| name.clone())
            .collect())
    }

    /// The version numbers of `subject` (40401 if it has none).
    pub fn versions(&self, subject: &str) -> Result<Vec<i32>> {
        let state = self.lock()?;
        let count = state.live_subject(subject)?.versions.len();
        Ok((0..count).map(version_number).collect())
    }

    /// One version of `subject` (40401 / 40402).
    pub fn version(&self, subject: &str, version: VersionRef) -> Result<SubjectVersion> {
        let state = self.lock()?;
        let versions = &state.live_subject(subject)?.versions;
        let index = match version {
            VersionRef::Latest => versions.len().checked_sub(1),
            VersionRef::Number(n) => usize::try_from(n)
                .ok()
                .and_then(|n| n.checked_sub(1))
                .filter(|i| *i < versions.len()),
        };
        let index = index.ok_or_else(|| RegistryError::VersionNotFound {
            subject: subject.to_owned(),
            version: version.to_string(),
        })?;
        state.subject_version(subject, index, versions[index])
    }

    /// Checks `schema` against `subject` without registering it.
    ///
    /// `Latest` applies the subject's level as registration would (all versions for a
    /// transitive level); `Number(n)` checks against that one version in the level's
    /// direction(s). A subject without versions accepts anything.
    pub fn check_compatibility(
        &self,
        subject: &str,
        schema: &str,
        version: VersionRef,
    ) -> Result<CompatibilityReport> {
        let candidate = parse(schema)?;
        let state = self.lock()?;
        let level = state.level_of(subject);
        let all = state.parsed_versions(subject);
        if all.is_empty() {
            return Ok(CompatibilityReport {
                is_compatible: true,
                messages: Vec::new(),
            });
        }
        let targets = match version {
            VersionRef::Latest => all,
            VersionRef::Number(n) => {
                let one = usize::try_from(n)
                    .ok()
                    .and_then(|n| n.checked_sub(1))
                    .and_then(|i| all.get(i).copied())
                    .ok_or_else(|| RegistryError::VersionNotFound {
                        subject: subject.to_owned(),
                        version: n.to_string(),
                    })?;
                vec![one]
            }
        };
        Ok(compatibility::check(level, &candidate.parsed, &targets))
    }

    /// The level in force for `subject` (its own, else the global one), or the global level.
    pub fn compatibility(&self, subject: Option<&str>) -> Result<Compatibility> {
        let state = self.lock()?;
        Ok(match subject {
            Some(s) => state.level_of(s),
            None => state.global,
        })
    }

    /// Sets the level of `subject`, or the global level.
    pub fn set_compatibility(&self, subject: Option<&str>, level: Compatibility) -> Result<()> {
        let mut state = self.lock()?;
        match subject {
            Some(s) => state.subjects.entry(s.to_owned()).or_default().level = Some(level),
            None => state.global = level,
        }
        tracing::debug!(subject, %level, "compatibility level set");
        Ok(())
    }

    /// Deletes every version of `subject` and returns their numbers (40401 if none).
    ///
    /// Schema ids stay resolvable, as in Confluent, because data written with them may
    /// still be in topics. Versions restart at 1 if the subject is registered again.
    pub fn delete_subject(&self, subject: &str) -> Result<Vec<i32>> {
        let mut state = self.lock()?;
        state.live_subject(subject)?;
        let entry = state.subjects.entry(subject.to_owned()).or_default();
        let deleted = (0..entry.versions.len()).map(version_number).collect();
        entry.versions.clear();
        if entry.level.is_none() {
            state.subjects.remove(subject);
        }
        tracing::debug!(subject, "subject deleted");
        Ok(deleted)
    }
}

/// The caller-owned directory of in-memory registries for `mock://SCOPE` URLs.
///
/// Cloning shares the directory: every clone hands out the same `MemoryRegistry` for the
/// same scope. This replaces the global map Confluent's clients use, so tests and engines
/// that want isolation just create another `MockRegistries`.
#[derive(Debug, Clone, Default)]
pub struct MockRegistries {
    scopes: Arc<Mutex<HashMap<String, Arc<MemoryRegistry>>>>,
}

impl MockRegistries {
    /// An empty directory.
    pub fn new() -> Self {
        Self::default()
    }

    /// The registry of `scope`, created empty on first use.
    pub fn get(&self, scope: &str) -> Result<Arc<MemoryRegistry>> {
        let mut scopes = self.scopes.lock().map_err(|_| RegistryError::Store {
            reason: "mock registry directory lock poisoned by a panic in another thread".to_owned(),
        })?;
        Ok(Arc::clone(scopes.entry(scope.to_owned()).or_default()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(fields: &str) -> String {
        format!(r#"{{"type":"record","name":"User","namespace":"t","fields":[{fields}]}}"#)
    }

    const NAME: &str = r#"{"name":"name","type":"string"}"#;
    const AGE_DEFAULT: &str = r#"{"name":"age","type":"int","default":0}"#;
    const AGE_NO_DEFAULT: &str = r#"{"name":"age","type":"int"}"#;

    fn v1() -> String {
        record(NAME)
    }

    fn with_level(level: Compatibility) -> MemoryRegistry {
        let r = MemoryRegistry::with_compatibility(level);
        r.register("s", &v1()).unwrap();
        r
    }

    fn accepts(level: Compatibility, new: &str) -> bool {
        let r = with_level(level);
        match r.register("s", new) {
            Ok(_) => true,
            Err(RegistryError::Incompatible { messages, .. }) => {
                assert!(!messages.is_empty());
                false
            }
            Err(e) => panic!("unexpected error {e}"),
        }
    }

    #[test]
    fn same_schema_gets_same_id_across_subjects() {
        let r = MemoryRegistry::new();
        let a = r.register("a-value", &v1()).unwrap();
        // Whitespace and key order differ but the schema is the same.
        let b = r
            .register(
                "b-value",
                r#"{ "name": "User", "namespace": "t", "type": "record",
                     "fields": [ {"type": "string", "name": "name"} ] }"#,
            )
            .unwrap();
        assert_eq!(a, b);
        assert_eq!(a, 1);
        let other = r.register("c-value", &record(AGE_DEFAULT)).unwrap();
        assert_eq!(other, 2);
        assert_eq!(r.subjects().unwrap(), vec!["a-value", "b-value", "c-value"]);
        let users = r.subject_versions_of_id(1).unwrap();
        assert_eq!(
            users,
            vec![("a-value".to_owned(), 1), ("b-value".to_owned(), 1)]
        );
    }

    #[test]
    fn registration_is_idempotent() {
        let r = MemoryRegistry::new();
        let id = r.register("s", &v1()).unwrap();
        let id2 = r
            .register("s", &record(&format!("{NAME},{AGE_DEFAULT}")))
            .unwrap();
        assert_eq!(r.register("s", &v1()).unwrap(), id);
        assert_eq!(r.register("s", &v1()).unwrap(), id);
        assert_eq!(r.versions("s").unwrap(), vec![1, 2]);
        assert_eq!(r.version("s", VersionRef::Latest).unwrap().id, id2);
        let found = r.lookup("s", &v1()).unwrap();
        assert_eq!((found.id, found.version), (id, 1));
    }

    #[test]
    fn schemas_differing_only_in_defaults_get_different_ids() {
        let r = MemoryRegistry::with_compatibility(Compatibility::None);
        let a = r.register("s", &record(AGE_DEFAULT)).unwrap();
        let b = r
            .register("s", &record(r#"{"name":"age","type":"int","default":5}"#))
            .unwrap();
        assert_ne!(a, b);
    }

    #[test]
    fn add_field_with_default() {
        let new = record(&format!("{NAME},{AGE_DEFAULT}"));
        for level in Compatibility::ALL {
            assert!(accepts(level, &new), "{level} should accept");
        }
    }

    #[test]
    fn add_field_without_default() {
        let new = record(&format!("{NAME},{AGE_NO_DEFAULT}"));
        // New reader needs a value old data lacks; old reader simply skips it.
        assert!(!accepts(Compatibility::Backward, &new));
        assert!(!accepts(Compatibility::BackwardTransitive, &new));
        assert!(accepts(Compatibility::Forward, &new));
        assert!(accepts(Compatibility::ForwardTransitive, &new));
        assert!(!accepts(Compatibility::Full, &new));
        assert!(!accepts(Compatibility::FullTransitive, &new));
        assert!(accepts(Compatibility::None, &new));
    }

    #[test]
    fn remove_field() {
        let r = MemoryRegistry::with_compatibility(Compatibility::Backward);
        r.register("s", &record(&format!("{NAME},{AGE_NO_DEFAULT}")))
            .unwrap();
        // v2 drops `age`: a new reader skips writer fields it does not know.
        assert!(r.register("s", &record(NAME)).is_ok());
        let r = MemoryRegistry::with_compatibility(Compatibility::Forward);
        r.register("s", &record(&format!("{NAME},{AGE_NO_DEFAULT}")))
            .unwrap();
        let err = r.register("s", &record(NAME)).unwrap_err();
        assert_eq!(err.error_code(), Some(409));
        assert!(err.to_string().contains("age"), "{err}");
        // Removing a field that had a default is fine both ways.
        let r = MemoryRegistry::with_compatibility(Compatibility::Full);
        r.register("s", &record(&format!("{NAME},{AGE_DEFAULT}")))
            .unwrap();
        assert!(r.register("s", &record(NAME)).is_ok());
        // Replacing `name` (no default) by a defaulted field: only old readers break.
        let new = record(r#"{"name":"other","type":"string","default":""}"#);
        assert!(accepts(Compatibility::Backward, &new));
        assert!(!accepts(Compatibility::Forward, &new));
    }

    #[test]
    fn promote_int_to_long() {
        let int = record(AGE_NO_DEFAULT);
        let long = record(r#"{"name":"age","type":"long"}"#);
        let r = MemoryRegistry::with_compatibility(Compatibility::Backward);
        r.register("s", &int).unwrap();
        assert!(r.register("s", &long).is_ok(), "long reader reads int data");
        let r = MemoryRegistry::with_compatibility(Compatibility::Forward);
        r.register("s", &int).unwrap();
        assert!(
            r.register("s", &long).is_err(),
            "int reader cannot read long data"
        );
        let r = MemoryRegistry::with_compatibility(Compatibility::Full);
        r.register("s", &int).unwrap();
        assert!(r.register("s", &long).is_err());
    }

    #[test]
    fn rename_without_alias() {
        let renamed = record(r#"{"name":"full_name","type":"string"}"#);
        assert!(!accepts(Compatibility::Backward, &renamed));
        assert!(!accepts(Compatibility::Forward, &renamed));
        assert!(accepts(Compatibility::None, &renamed));
        // With an alias the new reader finds the old field.
        let aliased = record(r#"{"name":"full_name","type":"string","aliases":["name"]}"#);
        assert!(accepts(Compatibility::Backward, &aliased));
        // Renaming the record itself without an alias breaks name matching.
        let r = with_level(Compatibility::Backward);
        let err = r
            .register(
                "s",
                r#"{"type":"record","name":"Person","namespace":"t","fields":[{"name":"name","type":"string"}]}"#,
            )
            .unwrap_err();
        assert!(matches!(err, RegistryError::Incompatible { .. }), "{err}");
    }

    #[test]
    fn enum_symbol_added() {
        let e = |symbols: &str| {
            record(&format!(
                r#"{{"name":"color","type":{{"type":"enum","name":"Color","symbols":[{symbols}]}}}}"#
            ))
        };
        let make = |level| {
            let r = MemoryRegistry::with_compatibility(level);
            r.register("s", &e(r#""RED","GREEN""#)).unwrap();
            r
        };
        let added = e(r#""RED","GREEN","BLUE""#);
        assert!(make(Compatibility::Backward).register("s", &added).is_ok());
        assert!(make(Compatibility::Forward).register("s", &added).is_err());
        assert!(make(Compatibility::Full).register("s", &added).is_err());
        assert!(make(Compatibility::None).register("s", &added).is_ok());
    }

    #[test]
    fn transitive_checks_all_versions_latest_only_does_not() {
        // v1: age int (no default); v2: no age; v3: age string with default.
        // v3 reads v2 data (default) but not v1 data (int is not promotable to string).
        let v1 = record(&format!("{NAME},{AGE_NO_DEFAULT}"));
        let v2 = record(NAME);
        let v3 = record(&format!(
            r#"{NAME},{{"name":"age","type":"string","default":"?"}}"#
        ));
        let r = MemoryRegistry::with_compatibility(Compatibility::Backward);
        r.register("s", &v1).unwrap();
        r.register("s", &v2).unwrap();
        assert!(r.register("s", &v3).is_ok());

        let r = MemoryRegistry::with_compatibility(Compatibility::BackwardTransitive);
        r.register("s", &v1).unwrap();
        r.register("s", &v2).unwrap();
        let err = r.register("s", &v3).unwrap_err();
        assert!(matches!(err, RegistryError::Incompatible { .. }), "{err}");
        assert_eq!(r.versions("s").unwrap(), vec![1, 2]);

        // check_compatibility against `latest` follows the transitive rule, against a
        // given version only that version.
        assert!(
            !r.check_compatibility("s", &v3, VersionRef::Latest)
                .unwrap()
                .is_compatible
        );
        assert!(
            r.check_compatibility("s", &v3, VersionRef::Number(2))
                .unwrap()
                .is_compatible
        );
        assert!(
            !r.check_compatibility("s", &v3, VersionRef::Number(1))
                .unwrap()
                .is_compatible
        );
    }

    #[test]
    fn subject_level_overrides_global() {
        let r = MemoryRegistry::new();
        assert_eq!(r.compatibility(None).unwrap(), Compatibility::Backward);
        r.register("strict", &v1()).unwrap();
        r.register("loose", &v1()).unwrap();
        r.set_compatibility(Some("loose"), Compatibility::None)
            .unwrap();
        assert_eq!(r.compatibility(Some("loose")).unwrap(), Compatibility::None);
        assert_eq!(
            r.compatibility(Some("strict")).unwrap(),
            Compatibility::Backward
        );
        let breaking = record(AGE_NO_DEFAULT);
        assert!(r.register("strict", &breaking).is_err());
        assert!(r.register("loose", &breaking).is_ok());
        r.set_compatibility(None, Compatibility::Forward).unwrap();
        assert_eq!(
            r.compatibility(Some("strict")).unwrap(),
            Compatibility::Forward
        );
        assert_eq!(
            r.compatibility(Some("never-seen")).unwrap(),
            Compatibility::Forward
        );
        assert_eq!(r.compatibility(Some("loose")).unwrap(), Compatibility::None);
    }

    #[test]
    fn error_codes() {
        let r = MemoryRegistry::new();
        let code = |e: RegistryError| (e.error_code(), e.http_status());
        assert_eq!(
            code(r.register("s", "{not json").unwrap_err()),
            (Some(42201), 422)
        );
        assert_eq!(
            code(
                r.register("s", r#"{"type":"record","name":"R"}"#)
                    .unwrap_err()
            ),
            (Some(42201), 422)
        );
        assert_eq!(code(r.versions("s").unwrap_err()), (Some(40401), 404));
        assert_eq!(code(r.lookup("s", &v1()).unwrap_err()), (Some(40401), 404));
        assert_eq!(code(r.schema_by_id(1).unwrap_err()), (Some(40403), 404));
        assert_eq!(code(r.schema_by_id(0).unwrap_err()), (Some(40403), 404));
        r.register("s", &v1()).unwrap();
        assert_eq!(
            code(r.version("s", VersionRef::Number(2)).unwrap_err()),
            (Some(40402), 404)
        );
        assert_eq!(
            code(r.lookup("s", &record(AGE_DEFAULT)).unwrap_err()),
            (Some(40403), 404)
        );
        assert_eq!(
            code(r.register("s", &record(AGE_NO_DEFAULT)).unwrap_err()),
            (Some(409), 409)
        );
        assert_eq!(
            code("0".parse::<VersionRef>().unwrap_err()),
            (Some(42202), 422)
        );
    }

    #[test]
    fn delete_subject_keeps_ids_and_override() {
        let r = MemoryRegistry::new();
        let id = r.register("s", &v1()).unwrap();
        r.register("s", &record(&format!("{NAME},{AGE_DEFAULT}")))
            .unwrap();
        r.set_compatibility(Some("s"), Compatibility::None).unwrap();
        assert_eq!(r.delete_subject("s").unwrap(), vec![1, 2]);
        assert!(r.subjects().unwrap().is_empty());
        assert_eq!(r.delete_subject("s").unwrap_err().error_code(), Some(40401));
        assert!(r.schema_by_id(id).is_ok());
        assert_eq!(r.compatibility(Some("s")).unwrap(), Compatibility::None);
        assert_eq!(r.register("s", &record(AGE_NO_DEFAULT)).unwrap(), 3);
        assert_eq!(r.versions("s").unwrap(), vec![1]);
    }

    #[test]
    fn mock_scopes_share_registries() {
        let mocks = MockRegistries::new();
        let a = mocks.get("x").unwrap();
        let clone = mocks.clone();
        assert!(Arc::ptr_eq(&a, &clone.get("x").unwrap()));
        assert!(!Arc::ptr_eq(&a, &mocks.get("y").unwrap()));
        assert!(!Arc::ptr_eq(&a, &MockRegistries::new().get("x").unwrap()));
    }
}
