//! The writer side: [`EncodePlan`] compiles a schema once into a flat node
//! arena, and a custom `serde::Serializer` walks that arena while the value is
//! serialized, writing Avro binary straight into the output buffer and
//! validating as it goes (no intermediate value tree).

use std::collections::HashMap;

use apache_avro::schema::Schema as AvroSchema;
use serde::ser::{self, Serialize};

use super::error::{AvroError, Result};
use super::schema::{Names, Schema, full_name};
use super::wire::{write_bytes, write_long};

/// Serde-side shape of a value, used to pick a union branch.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Kind {
    Null,
    Bool,
    Int,
    Long,
    Float,
    Double,
    Bytes,
    Str,
    Array,
    Map,
    Record,
    Enum,
    Fixed,
}

/// One compiled schema node. Logical types are folded into their underlying
/// wire type; `logical` keeps what is needed to encode generic values.
#[derive(Debug)]
pub(crate) enum ENode {
    Null,
    Boolean,
    Int,
    Long,
    Float,
    Double,
    Bytes,
    String,
    Fixed {
        size: usize,
        name: Box<str>,
    },
    Enum {
        name: Box<str>,
        symbols: Box<[Box<str>]>,
    },
    Array(usize),
    Map(usize),
    Union(UnionPlan),
    Record(RecordPlan),
    /// Internal: one element of a `Vec<u8>` serialized as a sequence.
    U8,
    /// Placeholder while a recursive named type is being compiled.
    Pending,
}

#[derive(Debug)]
pub(crate) struct UnionPlan {
    pub(crate) branches: Box<[usize]>,
    pub(crate) kinds: Box<[Kind]>,
    /// Simple (unqualified) names of named branches, for struct/enum matching.
    pub(crate) names: Box<[Option<Box<str>>]>,
    /// Type labels ("int", "string", record simple name...) for matching
    /// Rust enum variant names against branches.
    pub(crate) labels: Box<[Box<str>]>,
}

impl UnionPlan {
    #[inline]
    fn pick(&self, prefs: &[Kind]) -> Option<usize> {
        for p in prefs {
            if let Some(i) = self.kinds.iter().position(|k| k == p) {
                return Some(i);
            }
        }
        None
    }

    fn pick_named(&self, kind: Kind, name: &str) -> Option<usize> {
        (0..self.kinds.len())
            .find(|&i| self.kinds[i] == kind && self.names[i].as_deref() == Some(name))
            .or_else(|| self.kinds.iter().position(|k| *k == kind))
    }

    fn pick_label(&self, variant: &str) -> Option<usize> {
        self.labels
            .iter()
            .position(|l| l.eq_ignore_ascii_case(variant))
    }
}

#[derive(Debug)]
pub(crate) struct RecordPlan {
    pub(crate) name: Box<str>,
    pub(crate) fields: Box<[EField]>,
}

#[derive(Debug)]
pub(crate) struct EField {
    pub(crate) name: Box<str>,
    pub(crate) node: usize,
    /// The schema default, pre-encoded at plan time.
    pub(crate) default: Option<Box<[u8]>>,
}

impl RecordPlan {
    fn position(&self, key: &str) -> Option<usize> {
        self.fields.iter().position(|f| &*f.name == key)
    }
}

/// A schema compiled for writing. Build once, reuse for every record.
#[derive(Debug)]
pub struct EncodePlan {
    pub(crate) nodes: Vec<ENode>,
    pub(crate) root: usize,
    string_node: usize,
    u8_node: usize,
}

impl EncodePlan {
    /// Compiles `schema` into a write plan.
    pub fn new(schema: &Schema) -> Result<EncodePlan> {
        Self::from_avro(schema.inner())
    }

    /// Compiles an apache-avro schema into a write plan.
    pub fn from_avro(schema: &AvroSchema) -> Result<EncodePlan> {
        let names = Names::new(schema)?;
        Self::with_names(schema, &names)
    }

    /// Compiles a sub-schema whose named references resolve through `names`.
    pub(crate) fn with_names<'s>(schema: &'s AvroSchema, names: &Names<'s>) -> Result<EncodePlan> {
        let mut c = Compiler {
            names,
            nodes: Vec::new(),
            named: HashMap::new(),
            defaults: Vec::new(),
        };
        let root = c.compile(schema)?;
        let string_node = c.push(ENode::String);
        let u8_node = c.push(ENode::U8);
        let defaults = std::mem::take(&mut c.defaults);
        let mut plan = EncodePlan {
            nodes: c.nodes,
            root,
            string_node,
            u8_node,
        };
        // Defaults are encoded once the whole arena exists, because a default
        // may contain a (recursive) named type compiled later.
        for (rec, field, json, fschema) in defaults {
            let value = super::value::json_to_value_named(json, fschema, names)
                .map_err(|e| AvroError::Schema(format!("bad default for field: {e}")))?;
            let mut buf = Vec::new();
            let ENode::Record(r) = &plan.nodes[rec] else {
                continue;
            };
            let (fname, node) = (r.fields[field].name.clone(), r.fields[field].node);
            super::value::encode_value_at(&plan, node, &value, &mut buf).map_err(|e| {
                AvroError::Schema(format!(
                    "default of field `{fname}` does not match its type: {e}"
                ))
            })?;
            if let ENode::Record(r) = &mut plan.nodes[rec] {
                r.fields[field].default = Some(buf.into_boxed_slice());
            }
        }
        Ok(plan)
    }

    /// Serializes `value` as one Avro datum appended to `out`.
    ///
    /// On error nothing is appended (the partial write is truncated away).
    pub fn encode<T: Serialize + ?Sized>(&self, value: &T, out: &mut Vec<u8>) -> Result<()> {
        let start = out.len();
        let r = value.serialize(Ser {
            plan: self,
            node: self.root,
            out,
        });
        if r.is_err() {
            out.truncate(start);
        }
        r
    }
}

type PendingDefault<'s> = (usize, usize, &'s serde_json::Value, &'s AvroSchema);

struct Compiler<'s, 'n> {
    names: &'n Names<'s>,
    nodes: Vec<ENode>,
    named: HashMap<String, usize>,
    defaults: Vec<PendingDefault<'s>>,
}

impl<'s> Compiler<'s, '_> {
    fn push(&mut self, n: ENode) -> usize {
        self.nodes.push(n);
        self.nodes.len() - 1
    }

    fn compile(&mut self, s: &'s AvroSchema) -> Result<usize> {
        let s = self.names.deref(s)?;
        if let Some(fname) = full_name(s) {
            if let Some(&i) = self.named.get(&fname) {
                return Ok(i);
            }
            let i = self.push(ENode::Pending);
            self.named.insert(fname, i);
            let n = self.build(s, Some(i))?;
            self.nodes[i] = n;
            return Ok(i);
        }
        let n = self.build(s, None)?;
        Ok(self.push(n))
    }

    fn build(&mut self, s: &'s AvroSchema, me: Option<usize>) -> Result<ENode> {
        Ok(match s {
            AvroSchema::Null => ENode::Null,
            AvroSchema::Boolean => ENode::Boolean,
            AvroSchema::Int | AvroSchema::Date | AvroSchema::TimeMillis => ENode::Int,
            AvroSchema::Long
            | AvroSchema::TimeMicros
            | AvroSchema::TimestampMillis
            | AvroSchema::TimestampMicros
            | AvroSchema::TimestampNanos
            | AvroSchema::LocalTimestampMillis
            | AvroSchema::LocalTimestampMicros
            | AvroSchema::LocalTimestampNanos => ENode::Long,
            AvroSchema::Float => ENode::Float,
            AvroSchema::Double => ENode::Double,
            AvroSchema::Bytes | AvroSchema::BigDecimal => ENode::Bytes,
            AvroSchema::String | AvroSchema::Uuid => ENode::String,
            AvroSchema::Duration => ENode::Fixed {
                size: 12,
                name: "duration".into(),
            },
            AvroSchema::Decimal(d) => return self.build(self.names.deref(&d.inner)?, me),
            AvroSchema::Fixed(f) => ENode::Fixed {
                size: f.size,
                name: f.name.name.clone().into(),
            },
            AvroSchema::Enum(e) => ENode::Enum {
                name: e.name.name.clone().into(),
                symbols: e.symbols.iter().map(|s| s.as_str().into()).collect(),
            },
            AvroSchema::Array(a) => ENode::Array(self.compile(&a.items)?),
            AvroSchema::Map(m) => ENode::Map(self.compile(&m.types)?),
            AvroSchema::Union(u) => {
                let mut branches = Vec::new();
                let mut kinds = Vec::new();
                let mut names = Vec::new();
                let mut labels = Vec::new();
                for b in u.variants() {
                    let b = self.names.deref(b)?;
                    branches.push(self.compile(b)?);
                    kinds.push(kind_of(b));
                    let simple = b.name().map(|n| n.name.clone().into_boxed_str());
                    labels.push(
                        simple
                            .clone()
                            .unwrap_or_else(|| super::schema::type_label(b).into_boxed_str()),
                    );
                    names.push(simple);
                }
                ENode::Union(UnionPlan {
                    branches: branches.into(),
                    kinds: kinds.into(),
                    names: names.into(),
                    labels: labels.into(),
                })
            }
            AvroSchema::Record(r) => {
                let mut fields = Vec::with_capacity(r.fields.len());
                for (i, f) in r.fields.iter().enumerate() {
                    let node = self.compile(&f.schema)?;
                    if let (Some(d), Some(me)) = (&f.default, me) {
                        self.defaults.push((me, i, d, &f.schema));
                    }
                    fields.push(EField {
                        name: f.name.as_str().into(),
                        node,
                        default: None,
                    });
                }
                ENode::Record(RecordPlan {
                    name: r.name.name.clone().into(),
                    fields: fields.into(),
                })
            }
            AvroSchema::Ref { name } => {
                return Err(AvroError::Schema(format!(
                    "unresolved reference {}",
                    name.fullname(None)
                )));
            }
        })
    }
}

pub(crate) fn kind_of(s: &AvroSchema) -> Kind {
    match s {
        AvroSchema::Null => Kind::Null,
        AvroSchema::Boolean => Kind::Bool,
        AvroSchema::Int | AvroSchema::Date | AvroSchema::TimeMillis => Kind::Int,
        AvroSchema::Long
        | AvroSchema::TimeMicros
        | AvroSchema::TimestampMillis
        | AvroSchema::TimestampMicros
        | AvroSchema::TimestampNanos
        | AvroSchema::LocalTimestampMillis
        | AvroSchema::LocalTimestampMicros
        | AvroSchema::LocalTimestampNanos => Kind::Long,
        AvroSchema::Float => Kind::Float,
        AvroSchema::Double => Kind::Double,
        AvroSchema::Bytes | AvroSchema::BigDecimal => Kind::Bytes,
        AvroSchema::String | AvroSchema::Uuid => Kind::Str,
        AvroSchema::Array(_) => Kind::Array,
        AvroSchema::Map(_) => Kind::Map,
        AvroSchema::Record(_) => Kind::Record,
        AvroSchema::Enum(_) => Kind::Enum,
        AvroSchema::Fixed(_) | AvroSchema::Duration => Kind::Fixed,
        AvroSchema::Decimal(d) => kind_of(&d.inner),
        // Unions cannot nest and refs are dereferenced before this is called.
        AvroSchema::Union(_) | AvroSchema::Ref { .. } => Kind::Record,
    }
}

pub(crate) fn node_label(n: &ENode) -> String {
    match n {
        ENode::Null => "null".into(),
        ENode::Boolean => "boolean".into(),
        ENode::Int => "int".into(),
        ENode::Long => "long".into(),
        ENode::Float => "float".into(),
        ENode::Double => "double".into(),
        ENode::Bytes => "bytes".into(),
        ENode::String => "string".into(),
        ENode::Fixed { size, name } => format!("fixed {name} (size {size})"),
        ENode::Enum { name, .. } => format!("enum {name}"),
        ENode::Array(_) => "array".into(),
        ENode::Map(_) => "map".into(),
        ENode::Union(u) => format!("union [{}]", u.labels.join(", ")),
        ENode::Record(r) => format!("record {}", r.name),
        ENode::U8 => "byte (0..=255)".into(),
        ENode::Pending => "<unresolved>".into(),
    }
}

#[cold]
fn mismatch(n: &ENode, got: &str) -> AvroError {
    AvroError::encode(format!("expected {}, got {got}", node_label(n)))
}

/// Writes Avro while a value serializes itself; `node` is the schema position.
pub(crate) struct Ser<'p, 'o> {
    plan: &'p EncodePlan,
    node: usize,
    out: &'o mut Vec<u8>,
}

impl<'p, 'o> Ser<'p, 'o> {
    /// Resolves a union (writing the branch index) to the branch that accepts
    /// the first kind in `prefs`; non-union nodes pass through.
    #[inline(always)]
    fn select(&mut self, prefs: &[Kind], got: &str) -> Result<(usize, &'p ENode)> {
        let nodes = &self.plan.nodes;
        match &nodes[self.node] {
            ENode::Union(u) => match u.pick(prefs) {
                Some(i) => {
                    write_long(self.out, i as i64);
                    let b = u.branches[i];
                    Ok((b, &nodes[b]))
                }
                None => Err(no_branch(&nodes[self.node], got)),
            },
            n => Ok((self.node, n)),
        }
    }

    fn select_named(&mut self, kind: Kind, name: &str, got: &str) -> Result<(usize, &'p ENode)> {
        let nodes = &self.plan.nodes;
        match &nodes[self.node] {
            ENode::Union(u) => {
                let i = u.pick_named(kind, name).or_else(|| {
                    // A struct may also be written as a map, an enum as a string.
                    match kind {
                        Kind::Record => u.pick(&[Kind::Map]),
                        Kind::Enum => u.pick(&[Kind::Str]),
                        _ => None,
                    }
                });
                match i {
                    Some(i) => {
                        write_long(self.out, i as i64);
                        let b = u.branches[i];
                        Ok((b, &nodes[b]))
                    }
                    None => Err(no_branch(&nodes[self.node], got)),
                }
            }
            n => Ok((self.node, n)),
        }
    }

    /// For data-carrying Rust enum variants: picks the union branch whose
    /// type name equals the variant name.
    fn select_variant(&mut self, variant: &str) -> Result<Option<usize>> {
        let nodes = &self.plan.nodes;
        match &nodes[self.node] {
            ENode::Union(u) => match u.pick_label(variant) {
                Some(i) => {
                    write_long(self.out, i as i64);
                    Ok(Some(u.branches[i]))
                }
                None => Ok(None),
            },
            n => Err(mismatch(n, &format!("enum variant `{variant}` with data"))),
        }
    }

    fn child(&mut self, node: usize) -> Ser<'p, '_> {
        Ser {
            plan: self.plan,
            node,
            out: self.out,
        }
    }

    #[inline(always)]
    fn int(mut self, v: i64, got: &str) -> Result<()> {
        let fits = i32::try_from(v).is_ok();
        let prefs: &[Kind] = if fits {
            &[Kind::Int, Kind::Long, Kind::Float, Kind::Double]
        } else {
            &[Kind::Long, Kind::Double, Kind::Float]
        };
        let (_, n) = self.select(prefs, got)?;
        match n {
            ENode::Long => write_long(self.out, v),
            ENode::Int if fits => write_long(self.out, v),
            ENode::Int => {
                return Err(AvroError::encode(format!(
                    "value {v} out of range for int (-2147483648..=2147483647)"
                )));
            }
            ENode::Float => self.out.extend_from_slice(&(v as f32).to_le_bytes()),
            ENode::Double => self.out.extend_from_slice(&(v as f64).to_le_bytes()),
            ENode::U8 => match u8::try_from(v) {
                Ok(b) => self.out.push(b),
                Err(_) => {
                    return Err(AvroError::encode(format!(
                        "byte value {v} out of range 0..=255"
                    )));
                }
            },
            n => return Err(mismatch(n, got)),
        }
        Ok(())
    }

    fn float(mut self, v: f64, prefer_float: bool) -> Result<()> {
        let prefs: &[Kind] = if prefer_float {
            &[Kind::Float, Kind::Double]
        } else {
            &[Kind::Double, Kind::Float]
        };
        match self.select(prefs, "a floating point number")?.1 {
            ENode::Float => self.out.extend_from_slice(&(v as f32).to_le_bytes()),
            ENode::Double => self.out.extend_from_slice(&v.to_le_bytes()),
            n => return Err(mismatch(n, "a floating point number")),
        }
        Ok(())
    }

    fn enum_symbol(out: &mut Vec<u8>, n: &ENode, index: Option<u32>, sym: &str) -> Result<()> {
        match n {
            ENode::Enum { name, symbols } => {
                // Rust enums usually declare variants in schema order, so the
                // serde variant index is checked first.
                if let Some(i) = index.map(|i| i as usize)
                    && symbols.get(i).is_some_and(|s| &**s == sym)
                {
                    write_long(out, i as i64);
                    return Ok(());
                }
                match symbols.iter().position(|s| &**s == sym) {
                    Some(i) => {
                        write_long(out, i as i64);
                        Ok(())
                    }
                    None => Err(AvroError::encode(format!(
                        "symbol `{sym}` is not in enum {name} (expected one of: {})",
                        symbols.join(", ")
                    ))),
                }
            }
            ENode::String => {
                write_bytes(out, sym.as_bytes());
                Ok(())
            }
            n => Err(mismatch(n, &format!("enum symbol `{sym}`"))),
        }
    }
}

#[cold]
fn no_branch(n: &ENode, got: &str) -> AvroError {
    AvroError::encode(format!("no branch of {} accepts {got}", node_label(n)))
}

impl<'p, 'o> ser::Serializer for Ser<'p, 'o> {
    type Ok = ();
    type Error = AvroError;
    type SerializeSeq = SeqSer<'p, 'o>;
    type SerializeTuple = SeqSer<'p, 'o>;
    type SerializeTupleStruct = SeqSer<'p, 'o>;
    type SerializeTupleVariant = SeqSer<'p, 'o>;
    type SerializeMap = MapSer<'p, 'o>;
    type SerializeStruct = StructSer<'p, 'o>;
    type SerializeStructVariant = StructSer<'p, 'o>;

    fn serialize_bool(mut self, v: bool) -> Result<()> {
        match self.select(&[Kind::Bool], "a boolean")?.1 {
            ENode::Boolean => {
                self.out.push(v as u8);
                Ok(())
            }
            n => Err(mismatch(n, "a boolean")),
        }
    }

    fn serialize_i8(self, v: i8) -> Result<()> {
        self.int(v as i64, "an integer")
    }
    fn serialize_i16(self, v: i16) -> Result<()> {
        self.int(v as i64, "an integer")
    }
    fn serialize_i32(self, v: i32) -> Result<()> {
        self.int(v as i64, "an integer")
    }
    fn serialize_i64(self, v: i64) -> Result<()> {
        self.int(v, "an integer")
    }
    fn serialize_i128(self, v: i128) -> Result<()> {
        match i64::try_from(v) {
            Ok(v) => self.int(v, "an integer"),
            Err(_) => Err(AvroError::encode(format!(
                "value {v} out of range for long"
            ))),
        }
    }
    fn serialize_u8(self, v: u8) -> Result<()> {
        self.int(v as i64, "an integer")
    }
    fn serialize_u16(self, v: u16) -> Result<()> {
        self.int(v as i64, "an integer")
    }
    fn serialize_u32(self, v: u32) -> Result<()> {
        self.int(v as i64, "an integer")
    }
    fn serialize_u64(self, v: u64) -> Result<()> {
        match i64::try_from(v) {
            Ok(v) => self.int(v, "an integer"),
            Err(_) => Err(AvroError::encode(format!(
                "value {v} out of range for long (max 9223372036854775807)"
            ))),
        }
    }
    fn serialize_u128(self, v: u128) -> Result<()> {
        match i64::try_from(v) {
            Ok(v) => self.int(v, "an integer"),
            Err(_) => Err(AvroError::encode(format!(
                "value {v} out of range for long"
            ))),
        }
    }
    fn serialize_f32(self, v: f32) -> Result<()> {
        self.float(v as f64, true)
    }
    fn serialize_f64(self, v: f64) -> Result<()> {
        self.float(v, false)
    }
    fn serialize_char(self, v: char) -> Result<()> {
        self.serialize_str(v.encode_utf8(&mut [0u8; 4]))
    }

    #[inline]
    fn serialize_str(mut self, v: &str) -> Result<()> {
        match self
            .select(&[Kind::Str, Kind::Bytes, Kind::Enum], "a string")?
            .1
        {
            ENode::String | ENode::Bytes => {
                write_bytes(self.out, v.as_bytes());
                Ok(())
            }
            n @ ENode::Enum { .. } => Self::enum_symbol(self.out, n, None, v),
            n => Err(mismatch(n, "a string")),
        }
    }

    fn serialize_bytes(mut self, v: &[u8]) -> Result<()> {
        match self
            .select(&[Kind::Bytes, Kind::Fixed, Kind::Str], "bytes")?
            .1
        {
            ENode::Bytes => write_bytes(self.out, v),
            ENode::String => match std::str::from_utf8(v) {
                Ok(_) => write_bytes(self.out, v),
                Err(_) => {
                    return Err(AvroError::encode(
                        "bytes written to a string field are not valid UTF-8",
                    ));
                }
            },
            ENode::Fixed { size, name } => {
                if v.len() != *size {
                    return Err(AvroError::encode(format!(
                        "fixed {name} needs exactly {size} bytes, got {}",
                        v.len()
                    )));
                }
                self.out.extend_from_slice(v);
            }
            n => return Err(mismatch(n, "bytes")),
        }
        Ok(())
    }

    #[inline]
    fn serialize_none(mut self) -> Result<()> {
        match self.select(&[Kind::Null], "None")?.1 {
            ENode::Null => Ok(()),
            n => Err(mismatch(n, "None (no null branch)")),
        }
    }

    #[inline]
    fn serialize_some<T: Serialize + ?Sized>(self, value: &T) -> Result<()> {
        value.serialize(self)
    }

    fn serialize_unit(mut self) -> Result<()> {
        match self.select(&[Kind::Null], "unit")?.1 {
            ENode::Null => Ok(()),
            n => Err(mismatch(n, "unit")),
        }
    }

    fn serialize_unit_struct(self, _name: &'static str) -> Result<()> {
        self.serialize_unit()
    }

    #[inline]
    fn serialize_unit_variant(
        mut self,
        name: &'static str,
        index: u32,
        variant: &'static str,
    ) -> Result<()> {
        let (_, n) = self.select_named(Kind::Enum, name, "an enum symbol")?;
        Self::enum_symbol(self.out, n, Some(index), variant)
    }

    fn serialize_newtype_struct<T: Serialize + ?Sized>(
        self,
        _name: &'static str,
        value: &T,
    ) -> Result<()> {
        value.serialize(self)
    }

    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        mut self,
        _name: &'static str,
        _index: u32,
        variant: &'static str,
        value: &T,
    ) -> Result<()> {
        match self.select_variant(variant)? {
            Some(b) => value.serialize(self.child(b)),
            // No branch is named after the variant: let the payload's own
            // type choose the branch.
            None => value.serialize(self),
        }
    }

    fn serialize_seq(mut self, len: Option<usize>) -> Result<SeqSer<'p, 'o>> {
        let (_, n) = self.select(&[Kind::Array, Kind::Bytes, Kind::Fixed], "a sequence")?;
        SeqSer::new(self.plan, n, self.out, len)
    }

    fn serialize_tuple(mut self, len: usize) -> Result<SeqSer<'p, 'o>> {
        let (_, n) = self.select(&[Kind::Fixed, Kind::Array, Kind::Bytes], "a tuple")?;
        SeqSer::new(self.plan, n, self.out, Some(len))
    }

    fn serialize_tuple_struct(self, _name: &'static str, len: usize) -> Result<SeqSer<'p, 'o>> {
        self.serialize_tuple(len)
    }

    fn serialize_tuple_variant(
        mut self,
        _name: &'static str,
        _index: u32,
        variant: &'static str,
        len: usize,
    ) -> Result<SeqSer<'p, 'o>> {
        match self.select_variant(variant)? {
            Some(b) => {
                self.node = b;
                self.serialize_tuple(len)
            }
            None => self.serialize_tuple(len),
        }
    }

    fn serialize_map(mut self, len: Option<usize>) -> Result<MapSer<'p, 'o>> {
        let (_, n) = self.select(&[Kind::Map, Kind::Record], "a map")?;
        match n {
            ENode::Map(values) => Ok(MapSer::Map {
                plan: self.plan,
                values: *values,
                block: Block::begin(self.out, len),
                out: self.out,
                key_start: 0,
            }),
            ENode::Record(rec) => Ok(MapSer::Record {
                st: RecordState::new(self.plan, rec, self.out),
                key: None,
            }),
            n => Err(mismatch(n, "a map")),
        }
    }

    #[inline]
    fn serialize_struct(mut self, name: &'static str, _len: usize) -> Result<StructSer<'p, 'o>> {
        let (_, n) = self.select_named(Kind::Record, name, "a struct")?;
        match n {
            ENode::Record(rec) => Ok(StructSer::Record(RecordState::new(
                self.plan, rec, self.out,
            ))),
            ENode::Map(values) => Ok(StructSer::Map {
                plan: self.plan,
                values: *values,
                block: Block::begin(self.out, None),
                out: self.out,
            }),
            n => Err(mismatch(n, &format!("struct {name}"))),
        }
    }

    fn serialize_struct_variant(
        mut self,
        _name: &'static str,
        _index: u32,
        variant: &'static str,
        len: usize,
    ) -> Result<StructSer<'p, 'o>> {
        match self.select_variant(variant)? {
            Some(b) => {
                self.node = b;
                self.serialize_struct(variant, len)
            }
            None => self.serialize_struct(variant, len),
        }
    }
}

/// Array/map block framing. With a known length the count is written up
/// front; otherwise it is inserted before the items once they are written.
pub(crate) struct Block {
    start: usize,
    known: Option<usize>,
    count: usize,
}

impl Block {
    #[inline]
    fn begin(out: &mut Vec<u8>, len: Option<usize>) -> Block {
        if let Some(n) = len
            && n > 0
        {
            write_long(out, n as i64);
        }
        Block {
            start: out.len(),
            known: len,
            count: 0,
        }
    }

    #[inline]
    fn end(self, out: &mut Vec<u8>) -> Result<()> {
        match self.known {
            Some(n) if n != self.count => {
                return Err(AvroError::encode(format!(
                    "sequence announced {n} items but produced {}",
                    self.count
                )));
            }
            Some(_) => {}
            None if self.count > 0 => {
                let mut head = Vec::with_capacity(10);
                write_long(&mut head, self.count as i64);
                out.splice(self.start..self.start, head);
            }
            None => {}
        }
        out.push(0);
        Ok(())
    }
}

/// Serializer state for sequences: Avro arrays, or bytes/fixed built from a
/// sequence of `u8` (a plain `Vec<u8>` without `serde_bytes`).
pub(crate) enum SeqSer<'p, 'o> {
    Array {
        plan: &'p EncodePlan,
        item: usize,
        block: Block,
        out: &'o mut Vec<u8>,
    },
    Bytes {
        plan: &'p EncodePlan,
        header: Block,
        out: &'o mut Vec<u8>,
        fixed: Option<(usize, &'p str)>,
    },
}

impl<'p, 'o> SeqSer<'p, 'o> {
    fn new(
        plan: &'p EncodePlan,
        n: &'p ENode,
        out: &'o mut Vec<u8>,
        len: Option<usize>,
    ) -> Result<Self> {
        match n {
            ENode::Array(item) => Ok(SeqSer::Array {
                plan,
                item: *item,
                block: Block::begin(out, len),
                out,
            }),
            ENode::Bytes => {
                if let Some(n) = len {
                    write_long(out, n as i64);
                }
                Ok(SeqSer::Bytes {
                    plan,
                    header: Block {
                        start: out.len(),
                        known: len,
                        count: 0,
                    },
                    out,
                    fixed: None,
                })
            }
            ENode::Fixed { size, name } => Ok(SeqSer::Bytes {
                plan,
                header: Block {
                    start: out.len(),
                    known: len,
                    count: 0,
                },
                out,
                fixed: Some((*size, name)),
            }),
            n => Err(mismatch(n, "a sequence")),
        }
    }

    #[inline]
    fn element<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<()> {
        match self {
            SeqSer::Array {
                plan,
                item,
                block,
                out,
            } => {
                let i = block.count;
                block.count += 1;
                value
                    .serialize(Ser {
                        plan,
                        node: *item,
                        out,
                    })
                    .map_err(|e| e.at_index(i))
            }
            SeqSer::Bytes {
                plan, header, out, ..
            } => {
                let i = header.count;
                header.count += 1;
                value
                    .serialize(Ser {
                        plan,
                        node: plan.u8_node,
                        out,
                    })
                    .map_err(|e| e.at_index(i))
            }
        }
    }

    fn finish(self) -> Result<()> {
        match self {
            SeqSer::Array { block, out, .. } => block.end(out),
            SeqSer::Bytes {
                header, out, fixed, ..
            } => match fixed {
                Some((size, name)) => {
                    if header.count != size {
                        return Err(AvroError::encode(format!(
                            "fixed {name} needs exactly {size} bytes, got {}",
                            header.count
                        )));
                    }
                    Ok(())
                }
                None => {
                    if header.known.is_none() {
                        let mut head = Vec::with_capacity(10);
                        write_long(&mut head, header.count as i64);
                        out.splice(header.start..header.start, head);
                    } else if header.known != Some(header.count) {
                        return Err(AvroError::encode(
                            "byte sequence length does not match its announced length",
                        ));
                    }
                    Ok(())
                }
            },
        }
    }
}

impl ser::SerializeSeq for SeqSer<'_, '_> {
    type Ok = ();
    type Error = AvroError;
    fn serialize_element<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<()> {
        self.element(value)
    }
    fn end(self) -> Result<()> {
        self.finish()
    }
}

impl ser::SerializeTuple for SeqSer<'_, '_> {
    type Ok = ();
    type Error = AvroError;
    fn serialize_element<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<()> {
        self.element(value)
    }
    fn end(self) -> Result<()> {
        self.finish()
    }
}

impl ser::SerializeTupleStruct for SeqSer<'_, '_> {
    type Ok = ();
    type Error = AvroError;
    fn serialize_field<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<()> {
        self.element(value)
    }
    fn end(self) -> Result<()> {
        self.finish()
    }
}

impl ser::SerializeTupleVariant for SeqSer<'_, '_> {
    type Ok = ();
    type Error = AvroError;
    fn serialize_field<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<()> {
        self.element(value)
    }
    fn end(self) -> Result<()> {
        self.finish()
    }
}

/// Writes record fields in schema order. Fields arriving in schema order go
/// straight to the output; out-of-order ones are buffered (allocated only
/// when that actually happens) and spliced in as soon as their turn comes.
pub(crate) struct RecordState<'p, 'o> {
    plan: &'p EncodePlan,
    rec: &'p RecordPlan,
    out: &'o mut Vec<u8>,
    pos: usize,
    pending: Option<Vec<Option<Vec<u8>>>>,
}

impl<'p, 'o> RecordState<'p, 'o> {
    fn new(plan: &'p EncodePlan, rec: &'p RecordPlan, out: &'o mut Vec<u8>) -> Self {
        RecordState {
            plan,
            rec,
            out,
            pos: 0,
            pending: None,
        }
    }

    #[inline(always)]
    fn field<T: Serialize + ?Sized>(&mut self, key: &str, value: &T) -> Result<()> {
        if self.pending.is_none()
            && let Some(f) = self.rec.fields.get(self.pos)
            && &*f.name == key
        {
            value
                .serialize(Ser {
                    plan: self.plan,
                    node: f.node,
                    out: self.out,
                })
                .map_err(|e| e.in_field(key))?;
            self.pos += 1;
            return Ok(());
        }
        self.field_slow(key, value)
    }

    #[inline(never)]
    fn field_slow<T: Serialize + ?Sized>(&mut self, key: &str, value: &T) -> Result<()> {
        let rec = self.rec;
        let Some(idx) = rec.position(key) else {
            return Err(AvroError::encode(format!(
                "field is not in record {} (schema fields: {})",
                rec.name,
                rec.fields
                    .iter()
                    .map(|f| &*f.name)
                    .collect::<Vec<_>>()
                    .join(", ")
            ))
            .in_field(key));
        };
        let pending = self
            .pending
            .get_or_insert_with(|| (0..rec.fields.len()).map(|_| None).collect());
        if idx < self.pos || pending[idx].is_some() {
            return Err(AvroError::encode("field written twice").in_field(key));
        }
        let node = rec.fields[idx].node;
        if idx == self.pos {
            value
                .serialize(Ser {
                    plan: self.plan,
                    node,
                    out: self.out,
                })
                .map_err(|e| e.in_field(key))?;
            self.pos += 1;
            while let Some(buf) = pending.get_mut(self.pos).and_then(Option::take) {
                self.out.extend_from_slice(&buf);
                self.pos += 1;
            }
        } else {
            let mut buf = Vec::new();
            value
                .serialize(Ser {
                    plan: self.plan,
                    node,
                    out: &mut buf,
                })
                .map_err(|e| e.in_field(key))?;
            pending[idx] = Some(buf);
        }
        Ok(())
    }

    #[inline]
    fn finish(mut self) -> Result<()> {
        let fields = &self.rec.fields;
        while self.pos < fields.len() {
            let f = &fields[self.pos];
            let buffered = self.pending.as_mut().and_then(|p| p[self.pos].take());
            match (buffered, &f.default) {
                (Some(buf), _) => self.out.extend_from_slice(&buf),
                (None, Some(d)) => self.out.extend_from_slice(d),
                (None, None) => {
                    return Err(AvroError::encode(format!(
                        "missing field of record {} (it has no default in the schema)",
                        self.rec.name
                    ))
                    .in_field(&f.name));
                }
            }
            self.pos += 1;
        }
        Ok(())
    }
}

/// Serializer state for Rust structs (to Avro records or maps).
pub(crate) enum StructSer<'p, 'o> {
    Record(RecordState<'p, 'o>),
    Map {
        plan: &'p EncodePlan,
        values: usize,
        block: Block,
        out: &'o mut Vec<u8>,
    },
}

impl StructSer<'_, '_> {
    #[inline(always)]
    fn field<T: Serialize + ?Sized>(&mut self, key: &'static str, value: &T) -> Result<()> {
        match self {
            StructSer::Record(st) => st.field(key, value),
            StructSer::Map {
                plan,
                values,
                block,
                out,
            } => {
                block.count += 1;
                write_bytes(out, key.as_bytes());
                value
                    .serialize(Ser {
                        plan,
                        node: *values,
                        out,
                    })
                    .map_err(|e| e.at_key(key))
            }
        }
    }

    fn finish(self) -> Result<()> {
        match self {
            StructSer::Record(st) => st.finish(),
            StructSer::Map { block, out, .. } => block.end(out),
        }
    }
}

impl ser::SerializeStruct for StructSer<'_, '_> {
    type Ok = ();
    type Error = AvroError;
    #[inline(always)]
    fn serialize_field<T: Serialize + ?Sized>(
        &mut self,
        key: &'static str,
        value: &T,
    ) -> Result<()> {
        self.field(key, value)
    }
    fn skip_field(&mut self, _key: &'static str) -> Result<()> {
        // A skipped field is treated as absent: its schema default is written.
        Ok(())
    }
    fn end(self) -> Result<()> {
        self.finish()
    }
}

impl ser::SerializeStructVariant for StructSer<'_, '_> {
    type Ok = ();
    type Error = AvroError;
    fn serialize_field<T: Serialize + ?Sized>(
        &mut self,
        key: &'static str,
        value: &T,
    ) -> Result<()> {
        self.field(key, value)
    }
    fn end(self) -> Result<()> {
        self.finish()
    }
}

/// Serializer state for Rust maps (to Avro maps, or to records by key).
pub(crate) enum MapSer<'p, 'o> {
    Map {
        plan: &'p EncodePlan,
        values: usize,
        block: Block,
        out: &'o mut Vec<u8>,
        key_start: usize,
    },
    Record {
        st: RecordState<'p, 'o>,
        key: Option<String>,
    },
}

impl ser::SerializeMap for MapSer<'_, '_> {
    type Ok = ();
    type Error = AvroError;

    fn serialize_key<T: Serialize + ?Sized>(&mut self, key: &T) -> Result<()> {
        match self {
            MapSer::Map {
                plan,
                block,
                out,
                key_start,
                ..
            } => {
                *key_start = out.len();
                block.count += 1;
                key.serialize(Ser {
                    plan,
                    node: plan.string_node,
                    out,
                })
                .map_err(|e| {
                    AvroError::encode(format!("map key must be a string: {e}"))
                        .at_index(block.count - 1)
                })
            }
            MapSer::Record { st, key: slot } => {
                let mut buf = Vec::new();
                key.serialize(Ser {
                    plan: st.plan,
                    node: st.plan.string_node,
                    out: &mut buf,
                })
                .map_err(|e| {
                    AvroError::encode(format!("record field name must be a string: {e}"))
                })?;
                let mut s = buf.as_slice();
                let name =
                    super::wire::read_str(&mut s).map_err(|e| AvroError::encode(e.to_string()))?;
                *slot = Some(name.to_string());
                Ok(())
            }
        }
    }

    fn serialize_value<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<()> {
        match self {
            MapSer::Map {
                plan,
                values,
                out,
                key_start,
                ..
            } => {
                let ks = *key_start;
                value
                    .serialize(Ser {
                        plan,
                        node: *values,
                        out,
                    })
                    .map_err(|e| {
                        let mut s = out.get(ks..).unwrap_or_default();
                        let key = super::wire::read_str(&mut s).unwrap_or("?").to_string();
                        e.at_key(&key)
                    })
            }
            MapSer::Record { st, key } => {
                let Some(k) = key.take() else {
                    return Err(AvroError::encode("map value serialized before its key"));
                };
                st.field(&k, value)
            }
        }
    }

    fn end(self) -> Result<()> {
        match self {
            MapSer::Map { block, out, .. } => block.end(out),
            MapSer::Record { st, .. } => st.finish(),
        }
    }
}
