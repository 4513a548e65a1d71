//! JSON through `serde_json`, reporting the path of the field that failed.

use std::marker::PhantomData;

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::{Result, Serde, SerdeError, SerdeInfo, Written};

/// JSON values of type `T` (any `Serialize + DeserializeOwned`, or `serde_json::Value`).
pub struct JsonSerde<T>(PhantomData<fn() -> T>);

impl<T> JsonSerde<T> {
    /// A JSON serde for `T`.
    pub fn new() -> Self {
        JsonSerde(PhantomData)
    }
}

impl<T> Default for JsonSerde<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T> Clone for JsonSerde<T> {
    fn clone(&self) -> Self {
        Self::new()
    }
}

impl<T> std::fmt::Debug for JsonSerde<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "JsonSerde<{}>", std::any::type_name::<T>())
    }
}

impl<T: Serialize + DeserializeOwned + 'static> Serde<T> for JsonSerde<T> {
    fn serialize(&self, _topic: &str, value: &T, out: &mut Vec<u8>) -> Result<Written> {
        let mut ser = serde_json::Serializer::new(out);
        serde_path_to_error::serialize(value, &mut ser).map_err(|e| {
            SerdeError::Unserializable {
                field: Some(e.path().to_string()).filter(|p| p != "."),
                reason: e.inner().to_string(),
            }
        })?;
        Ok(Written::Bytes)
    }

    fn deserialize(&self, _topic: &str, data: Option<&[u8]>) -> Result<T> {
        let data = data.ok_or(SerdeError::UnexpectedNull)?;
        let mut de = serde_json::Deserializer::from_slice(data);
        let value: T =
            serde_path_to_error::deserialize(&mut de).map_err(|e| SerdeError::InvalidData {
                field: Some(e.path().to_string()).filter(|p| p != "."),
                reason: e.inner().to_string(),
            })?;
        de.end().map_err(|e| SerdeError::InvalidData {
            field: None,
            reason: e.to_string(),
        })?;
        Ok(value)
    }

    fn to_json(&self, value: &T) -> Option<serde_json::Value> {
        serde_json::to_value(value).ok()
    }

    fn parse(&self, text: &str) -> Option<T> {
        serde_json::from_str(text)
            .or_else(|_| serde_json::from_value(serde_json::Value::from(text)))
            .ok()
    }

    fn info(&self) -> SerdeInfo {
        SerdeInfo {
            format: "json".into(),
            type_name: std::any::type_name::<T>(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Sla {
        deadline: i64,
    }
    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Ticket {
        ticket_id: String,
        sla: Sla,
    }

    #[test]
    fn round_trips() {
        let s = JsonSerde::<Ticket>::new();
        let t = Ticket {
            ticket_id: "t1".into(),
            sla: Sla { deadline: 5 },
        };
        let mut buf = Vec::new();
        s.serialize("t", &t, &mut buf).unwrap();
        assert_eq!(s.deserialize("t", Some(&buf)).unwrap(), t);
    }

    #[test]
    fn errors_name_the_nested_field() {
        let s = JsonSerde::<Ticket>::new();
        let err = s
            .deserialize(
                "t",
                Some(br#"{"ticket_id":"t1","sla":{"deadline":"soon"}}"#),
            )
            .unwrap_err();
        assert_eq!(err.field(), Some("sla.deadline"), "{err}");
    }

    #[test]
    fn trailing_garbage_is_refused() {
        let s = JsonSerde::<serde_json::Value>::new();
        assert!(s.deserialize("t", Some(b"{} x")).is_err());
    }
}
