//! Interactive queries: reading a store as JSON, with keys typed as text, for the
//! operations endpoint. Built where the store's types are known, kept type-erased.

use std::sync::Arc;

use crate::record::Timestamp;

use super::typed::StoreSerdes;
use super::{BytesStore, StoreError, framing, prefix_scan};

/// A key and value rendered as JSON.
pub type JsonEntry = (serde_json::Value, serde_json::Value);

/// Why a query could not be answered.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum QueryError {
    /// The key text does not parse as the store's key type.
    #[error("`{0}` is not a key of this store (keys are {1})")]
    BadKey(String, String),
    /// The store's serdes cannot render JSON.
    #[error("this store's values cannot be shown as JSON ({0})")]
    NotRenderable(String),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Which entries a scan returns.
#[derive(Clone, Debug, Default)]
pub struct ScanRequest {
    /// First key (inclusive), as text.
    pub from: Option<String>,
    /// Last key (exclusive), as text.
    pub to: Option<String>,
    /// Prefix of the serialized key, as text (for string keys: a string prefix).
    pub prefix: Option<String>,
    /// At most this many entries.
    pub limit: usize,
}

type GetFn =
    dyn Fn(&dyn BytesStore, &str, Timestamp) -> Result<Option<JsonEntry>, QueryError> + Send + Sync;
type ScanFn = dyn Fn(&dyn BytesStore, &ScanRequest, Timestamp) -> Result<Vec<JsonEntry>, QueryError>
    + Send
    + Sync;

type KeyFn = dyn Fn(&str) -> Result<Vec<u8>, QueryError> + Send + Sync;

/// Reads one store's entries as JSON.
pub struct StoreQuery {
    key: Box<KeyFn>,
    get: Box<GetFn>,
    scan: Box<ScanFn>,
}

impl std::fmt::Debug for StoreQuery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StoreQuery")
    }
}

impl StoreQuery {
    pub(crate) fn new<K: 'static, V: 'static>(store: &str, serdes: Arc<StoreSerdes<K, V>>) -> Self {
        let name: Arc<str> = Arc::from(store);
        let key_format = serdes.key.info().to_string();
        let (s1, n1, f1) = (serdes.clone(), name.clone(), key_format.clone());
        let (s2, n2, f2) = (serdes.clone(), name.clone(), key_format.clone());
        let key_bytes = move |s: &StoreSerdes<K, V>,
                              n: &str,
                              f: &str,
                              text: &str|
              -> Result<Vec<u8>, QueryError> {
            let key = s
                .key
                .parse(text)
                .ok_or_else(|| QueryError::BadKey(text.into(), f.into()))?;
            let mut out = Vec::new();
            s.key
                .serialize(n, &key, &mut out)
                .map_err(|e| QueryError::BadKey(format!("{text} ({e})"), f.into()))?;
            Ok(out)
        };
        let render =
            |s: &StoreSerdes<K, V>, n: &str, k: &[u8], v: &[u8]| -> Result<JsonEntry, QueryError> {
                let key = s
                    .key
                    .deserialize(n, Some(k))
                    .map_err(|e| QueryError::NotRenderable(e.to_string()))?;
                let value = s
                    .value
                    .deserialize(n, Some(v))
                    .map_err(|e| QueryError::NotRenderable(e.to_string()))?;
                Ok((
                    s.key
                        .to_json(&key)
                        .ok_or_else(|| QueryError::NotRenderable(s.key.info().to_string()))?,
                    s.value
                        .to_json(&value)
                        .ok_or_else(|| QueryError::NotRenderable(s.value.info().to_string()))?,
                ))
            };
        StoreQuery {
            key: Box::new(move |text| key_bytes(&s2, &n2, &f2, text)),
            get: Box::new(move |store, text, now| {
                let k = key_bytes(&s1, &n1, &f1, text)?;
                match store.get(&k)? {
                    None => Ok(None),
                    Some(stored) => match framing::unframe(&stored, now) {
                        None => Ok(None),
                        Some(v) => render(&s1, &n1, &k, v).map(Some),
                    },
                }
            }),
            scan: Box::new(move |store, request, now| {
                let entries = match &request.prefix {
                    Some(p) => prefix_scan(store, p.as_bytes())?,
                    None => {
                        let from = request
                            .from
                            .as_deref()
                            .map(|t| key_bytes(&serdes, &name, &key_format, t))
                            .transpose()?;
                        let to = request
                            .to
                            .as_deref()
                            .map(|t| key_bytes(&serdes, &name, &key_format, t))
                            .transpose()?;
                        store.range(from.as_deref(), to.as_deref())?
                    }
                };
                let mut out = Vec::new();
                for (k, stored) in entries {
                    if out.len() >= request.limit {
                        break;
                    }
                    if let Some(v) = framing::unframe(&stored, now) {
                        out.push(render(&serdes, &name, &k, v)?);
                    }
                }
                Ok(out)
            }),
        }
    }

    /// The key written as `text`, serialized as the store stores it.
    pub fn key_bytes(&self, text: &str) -> Result<Vec<u8>, QueryError> {
        (self.key)(text)
    }

    /// The entry of the key written as `text`.
    pub fn get(
        &self,
        store: &dyn BytesStore,
        text: &str,
        now: Timestamp,
    ) -> Result<Option<JsonEntry>, QueryError> {
        (self.get)(store, text, now)
    }

    /// Entries selected by `request`, in key order.
    pub fn scan(
        &self,
        store: &dyn BytesStore,
        request: &ScanRequest,
        now: Timestamp,
    ) -> Result<Vec<JsonEntry>, QueryError> {
        (self.scan)(store, request, now)
    }
}
