//! Serdes that need no schema: strings, bytes, integers, unit, and the nullable adapter.

use super::{Result, Serde, SerdeError, SerdeInfo, Written};

/// UTF-8 strings.
#[derive(Clone, Copy, Debug, Default)]
pub struct StringSerde;

impl Serde<String> for StringSerde {
    fn serialize(&self, _topic: &str, value: &String, out: &mut Vec<u8>) -> Result<Written> {
        out.extend_from_slice(value.as_bytes());
        Ok(Written::Bytes)
    }
    fn deserialize(&self, _topic: &str, data: Option<&[u8]>) -> Result<String> {
        let data = data.ok_or(SerdeError::UnexpectedNull)?;
        String::from_utf8(data.to_vec()).map_err(|e| SerdeError::InvalidData {
            field: None,
            reason: format!("not UTF-8 text: {e}"),
        })
    }
    fn to_json(&self, value: &String) -> Option<serde_json::Value> {
        Some(serde_json::Value::from(value.as_str()))
    }
    fn parse(&self, text: &str) -> Option<String> {
        Some(text.to_string())
    }
    fn info(&self) -> SerdeInfo {
        SerdeInfo {
            format: "string".into(),
            type_name: std::any::type_name::<String>(),
        }
    }
}

/// Raw bytes, unchanged.
#[derive(Clone, Copy, Debug, Default)]
pub struct BytesSerde;

impl Serde<Vec<u8>> for BytesSerde {
    fn serialize(&self, _topic: &str, value: &Vec<u8>, out: &mut Vec<u8>) -> Result<Written> {
        out.extend_from_slice(value);
        Ok(Written::Bytes)
    }
    fn deserialize(&self, _topic: &str, data: Option<&[u8]>) -> Result<Vec<u8>> {
        data.map(<[u8]>::to_vec).ok_or(SerdeError::UnexpectedNull)
    }
    fn info(&self) -> SerdeInfo {
        SerdeInfo {
            format: "bytes".into(),
            type_name: std::any::type_name::<Vec<u8>>(),
        }
    }
}

macro_rules! big_endian_serde {
    ($name:ident, $ty:ty, $format:literal) => {
        #[doc = concat!("Big-endian `", stringify!($ty), "`, as Kafka's Java serdes write it.")]
        #[derive(Clone, Copy, Debug, Default)]
        pub struct $name;

        impl Serde<$ty> for $name {
            fn serialize(&self, _topic: &str, value: &$ty, out: &mut Vec<u8>) -> Result<Written> {
                out.extend_from_slice(&value.to_be_bytes());
                Ok(Written::Bytes)
            }
            fn deserialize(&self, _topic: &str, data: Option<&[u8]>) -> Result<$ty> {
                let data = data.ok_or(SerdeError::UnexpectedNull)?;
                let bytes: [u8; std::mem::size_of::<$ty>()] =
                    data.try_into().map_err(|_| SerdeError::InvalidData {
                        field: None,
                        reason: format!(
                            "expected {} bytes for {}, got {}",
                            std::mem::size_of::<$ty>(),
                            $format,
                            data.len()
                        ),
                    })?;
                Ok(<$ty>::from_be_bytes(bytes))
            }
            fn to_json(&self, value: &$ty) -> Option<serde_json::Value> {
                Some(serde_json::Value::from(*value))
            }
            fn parse(&self, text: &str) -> Option<$ty> {
                text.parse().ok()
            }
            fn info(&self) -> SerdeInfo {
                SerdeInfo {
                    format: $format.into(),
                    type_name: std::any::type_name::<$ty>(),
                }
            }
        }
    };
}

big_endian_serde!(I64Serde, i64, "i64");
big_endian_serde!(I32Serde, i32, "i32");

/// Reads anything (including null) as `()`, writes null.
#[derive(Clone, Copy, Debug, Default)]
pub struct UnitSerde;

impl Serde<()> for UnitSerde {
    fn serialize(&self, _topic: &str, _value: &(), _out: &mut Vec<u8>) -> Result<Written> {
        Ok(Written::Null)
    }
    fn deserialize(&self, _topic: &str, _data: Option<&[u8]>) -> Result<()> {
        Ok(())
    }
    fn info(&self) -> SerdeInfo {
        SerdeInfo {
            format: "unit".into(),
            type_name: std::any::type_name::<()>(),
        }
    }
}

/// Maps null to `None` and back around another serde.
#[derive(Clone, Copy, Debug, Default)]
pub struct Nullable<S>(pub S);

impl<T, S: Serde<T>> Serde<Option<T>> for Nullable<S> {
    fn serialize(&self, topic: &str, value: &Option<T>, out: &mut Vec<u8>) -> Result<Written> {
        match value {
            Some(v) => self.0.serialize(topic, v, out),
            None => Ok(Written::Null),
        }
    }
    fn deserialize(&self, topic: &str, data: Option<&[u8]>) -> Result<Option<T>> {
        data.map(|d| self.0.deserialize(topic, Some(d))).transpose()
    }
    fn prepare(&self, topic: &str, role: super::SerdeRole) -> Result<()> {
        self.0.prepare(topic, role)
    }
    fn to_json(&self, value: &Option<T>) -> Option<serde_json::Value> {
        match value {
            Some(v) => self.0.to_json(v),
            None => Some(serde_json::Value::Null),
        }
    }
    fn parse(&self, text: &str) -> Option<Option<T>> {
        self.0.parse(text).map(Some)
    }
    fn info(&self) -> SerdeInfo {
        let inner = self.0.info();
        SerdeInfo {
            format: format!("nullable-{}", inner.format),
            type_name: std::any::type_name::<Option<T>>(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn round_trip<T: PartialEq + std::fmt::Debug, S: Serde<T>>(s: &S, v: T) {
        let mut buf = Vec::new();
        let written = s.serialize("t", &v, &mut buf).unwrap();
        let data = (written == Written::Bytes).then_some(&buf[..]);
        assert_eq!(s.deserialize("t", data).unwrap(), v);
    }

    proptest! {
        #[test]
        fn strings_round_trip(s in ".*") { round_trip(&StringSerde, s) }
        #[test]
        fn bytes_round_trip(b in proptest::collection::vec(any::<u8>(), 0..64)) { round_trip(&BytesSerde, b) }
        #[test]
        fn longs_round_trip(v in any::<i64>()) { round_trip(&I64Serde, v) }
        #[test]
        fn nullable_round_trips(v in proptest::option::of(any::<i32>())) { round_trip(&Nullable(I32Serde), v) }
        #[test]
        fn arbitrary_bytes_never_panic(b in proptest::collection::vec(any::<u8>(), 0..16)) {
            let _ = StringSerde.deserialize("t", Some(&b));
            let _ = I64Serde.deserialize("t", Some(&b));
        }
    }

    #[test]
    fn null_is_refused_unless_nullable() {
        assert_eq!(
            StringSerde.deserialize("t", None),
            Err(SerdeError::UnexpectedNull)
        );
        assert_eq!(Nullable(StringSerde).deserialize("t", None), Ok(None));
    }

    #[test]
    fn wrong_length_integer_is_invalid_data() {
        let err = I64Serde.deserialize("t", Some(&[1, 2, 3])).unwrap_err();
        assert!(err.to_string().contains("expected 8 bytes"), "{err}");
    }

    #[test]
    fn invalid_utf8_is_invalid_data() {
        let err = StringSerde
            .deserialize("t", Some(&[0xff, 0xfe]))
            .unwrap_err();
        assert!(err.to_string().contains("not UTF-8"), "{err}");
    }
}
