//! The reader side's compiled form: [`DecodePlan`] resolves a writer schema
//! against a reader schema once (Avro 1.11 schema resolution) into a flat node
//! arena that the deserializers interpret without any name lookups.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};

use apache_avro::schema::{Alias, Name, Schema as AvroSchema};

use super::enc::{EncodePlan, kind_of};
use super::error::{AvroError, Result};
use super::schema::{Names, Schema, type_label};

/// Logical type of the *reader* schema, only used to shape generic values.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Lg {
    None,
    Date,
    TimeMillis,
    TimeMicros,
    TsMillis,
    TsMicros,
    TsNanos,
    LocalTsMillis,
    LocalTsMicros,
    LocalTsNanos,
    Uuid,
    Decimal,
    BigDecimal,
    Duration,
}

/// One resolved (writer → reader) node.
#[derive(Debug)]
pub(crate) enum DNode {
    Null,
    Boolean,
    Int(Lg),
    Long(Lg),
    IntToLong(Lg),
    IntToFloat,
    IntToDouble,
    LongToFloat,
    LongToDouble,
    Float,
    FloatToDouble,
    Double,
    Bytes(Lg),
    String(Lg),
    StringToBytes(Lg),
    BytesToString(Lg),
    Fixed {
        size: usize,
        lg: Lg,
    },
    Enum(Box<DEnum>),
    Array(usize),
    Map(usize),
    Record(Box<DRecord>),
    /// Writer is a union: the branch index on the wire selects a node.
    WUnion(Box<[WBranch]>),
    /// Writer is not a union but the reader is: the value lands in reader
    /// branch `index`.
    RUnion {
        index: u32,
        node: usize,
        label: Box<str>,
        null: bool,
    },
    Pending,
}

#[derive(Debug)]
pub(crate) struct DEnum {
    pub(crate) name: Box<str>,
    /// Writer symbol index → reader symbol index (`None`: unknown symbol and
    /// the reader enum has no default).
    pub(crate) map: Box<[Option<u32>]>,
    pub(crate) writer_symbols: Box<[Box<str>]>,
    pub(crate) symbols: Box<[Box<str>]>,
}

#[derive(Debug)]
pub(crate) enum WBranch {
    Ok {
        /// Index in the reader union, if the reader is a union.
        reader_index: Option<u32>,
        node: usize,
        /// The branch reads as null (so `Option` targets see `None`).
        null: bool,
        label: Box<str>,
    },
    /// This writer branch cannot be read with the reader schema; only an
    /// error if it actually occurs in the data.
    Unresolvable(Box<str>),
}

#[derive(Debug)]
pub(crate) struct DRecord {
    /// Reader field names, in reader order.
    pub(crate) names: Box<[Box<str>]>,
    /// One step per writer field, in writer (wire) order.
    pub(crate) steps: Box<[Step]>,
    /// Reader-only fields, decoded from their pre-encoded defaults.
    pub(crate) defaults: Box<[DDefault]>,
    /// The address of the last serde `FIELDS` list found to match the wire order (so
    /// the struct can be read positionally), and of the last one that did not.
    pub(crate) positional_yes: AtomicUsize,
    pub(crate) positional_no: AtomicUsize,
}

impl DRecord {
    /// Whether a serde-derived struct declaring `fields` receives exactly the wire's
    /// fields in the wire's order, so it can be read as a sequence instead of a map
    /// (skipping field-name matching). Memoized by the address of `fields`, which serde
    /// derive makes a `'static` constant per type.
    pub(crate) fn positional(&self, fields: &'static [&'static str]) -> bool {
        let id = fields.as_ptr() as usize;
        if self.positional_yes.load(Ordering::Relaxed) == id {
            return true;
        }
        if self.positional_no.load(Ordering::Relaxed) == id {
            return false;
        }
        let read: Vec<&str> = self
            .steps
            .iter()
            .filter_map(|s| match *s {
                Step::Read { pos, .. } => Some(&*self.names[pos]),
                Step::Skip { .. } => None,
            })
            .collect();
        let matches = self.defaults.is_empty()
            && read.len() == fields.len()
            && read.iter().zip(fields).all(|(a, b)| a == b);
        if matches {
            self.positional_yes.store(id, Ordering::Relaxed);
        } else {
            self.positional_no.store(id, Ordering::Relaxed);
        }
        matches
    }
}

#[derive(Debug, Clone, Copy)]
pub(crate) enum Step {
    Read {
        pos: usize,
        node: usize,
    },
    Skip {
        node: usize,
        name_of_writer_field: usize,
    },
}

#[derive(Debug)]
pub(crate) struct DDefault {
    pub(crate) pos: usize,
    pub(crate) bytes: Box<[u8]>,
    pub(crate) node: usize,
}

/// A compiled (writer schema, reader schema) pair. Build once per pair and
/// reuse for every record; decoding never looks at the schemas again.
#[derive(Debug)]
pub struct DecodePlan {
    pub(crate) nodes: Vec<DNode>,
    /// Whether a node always consumes at least one input byte; used to bound
    /// array/map block counts by the remaining input.
    pub(crate) nonzero_width: Vec<bool>,
    pub(crate) root: usize,
    /// Writer field names referenced by `Step::Skip` (for error paths).
    pub(crate) skip_names: Vec<Box<str>>,
}

impl DecodePlan {
    /// Compiles the resolution of data written with `writer` into the shape
    /// of `reader`. Fails if the schemas cannot be resolved (for example a
    /// reader-only field without a default), naming the field path.
    pub fn new(writer: &Schema, reader: &Schema) -> Result<DecodePlan> {
        Self::from_avro(writer.inner(), reader.inner())
    }

    /// [`DecodePlan::new`], but refusing, with the field path, every pair where some
    /// datum the writer can write would not read: a writer union branch no reader branch
    /// takes, or an enum symbol the reader lacks with no enum default. A strict plan
    /// exists exactly when Avro's compatibility check (Java's
    /// `SchemaCompatibility.checkReaderWriterCompatibility`, which Confluent's registry
    /// uses) calls the reader compatible with the writer; the registry's compatibility
    /// levels are built on it. [`DecodePlan::new`] defers those two cases to the datum
    /// that meets them, as Java's `GenericDatumReader` does.
    pub fn strict(writer: &Schema, reader: &Schema) -> Result<DecodePlan> {
        Self::strict_from_avro(writer.inner(), reader.inner())
    }

    /// [`DecodePlan::strict`] for apache-avro schemas.
    pub fn strict_from_avro(writer: &AvroSchema, reader: &AvroSchema) -> Result<DecodePlan> {
        Self::compile(writer, reader, true)
    }

    /// Plan for reading data with the schema it was written with.
    pub fn identity(schema: &Schema) -> Result<DecodePlan> {
        Self::from_avro(schema.inner(), schema.inner())
    }

    /// [`DecodePlan::new`] for apache-avro schemas.
    pub fn from_avro(writer: &AvroSchema, reader: &AvroSchema) -> Result<DecodePlan> {
        Self::compile(writer, reader, false)
    }

    fn compile(writer: &AvroSchema, reader: &AvroSchema, strict: bool) -> Result<DecodePlan> {
        let wn = Names::new(writer)?;
        let rn = Names::new(reader)?;
        let mut c = Resolver {
            nodes: Vec::new(),
            memo: HashMap::new(),
            skip_names: Vec::new(),
            strict,
        };
        let root = c.resolve(writer, &wn, reader, &rn)?;
        let nonzero_width = (0..c.nodes.len())
            .map(|i| consumes_input(&c.nodes, i, 0))
            .collect();
        Ok(DecodePlan {
            nodes: c.nodes,
            nonzero_width,
            root,
            skip_names: c.skip_names,
        })
    }
}

fn consumes_input(nodes: &[DNode], i: usize, depth: u32) -> bool {
    if depth > 16 {
        // Deep/recursive structure: assume it consumes input; recursion
        // through a record always passes through a union or array (≥1 byte).
        return true;
    }
    match &nodes[i] {
        DNode::Null | DNode::Pending => false,
        DNode::Fixed { size, .. } => *size > 0,
        DNode::Record(r) => r.steps.iter().any(|s| match s {
            Step::Read { node, .. } | Step::Skip { node, .. } => {
                consumes_input(nodes, *node, depth + 1)
            }
        }),
        DNode::RUnion { node, .. } => consumes_input(nodes, *node, depth + 1),
        DNode::Enum(e) => e.map.len() > 1,
        _ => true,
    }
}

struct Resolver {
    nodes: Vec<DNode>,
    memo: HashMap<(usize, usize), usize>,
    skip_names: Vec<Box<str>>,
    /// Refuse at compile time what a lenient plan refuses only when a datum meets it.
    strict: bool,
}

fn lg_of(s: &AvroSchema) -> Lg {
    match s {
        AvroSchema::Date => Lg::Date,
        AvroSchema::TimeMillis => Lg::TimeMillis,
        AvroSchema::TimeMicros => Lg::TimeMicros,
        AvroSchema::TimestampMillis => Lg::TsMillis,
        AvroSchema::TimestampMicros => Lg::TsMicros,
        AvroSchema::TimestampNanos => Lg::TsNanos,
        AvroSchema::LocalTimestampMillis => Lg::LocalTsMillis,
        AvroSchema::LocalTimestampMicros => Lg::LocalTsMicros,
        AvroSchema::LocalTimestampNanos => Lg::LocalTsNanos,
        AvroSchema::Uuid => Lg::Uuid,
        AvroSchema::Decimal(_) => Lg::Decimal,
        AvroSchema::BigDecimal => Lg::BigDecimal,
        AvroSchema::Duration => Lg::Duration,
        _ => Lg::None,
    }
}

/// The wire-level type family of a (dereferenced) schema.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Wire {
    Null,
    Bool,
    Int,
    Long,
    Float,
    Double,
    Bytes,
    Str,
    Fixed(usize),
    Enum,
    Array,
    Map,
    Record,
    Union,
}

fn wire_of(s: &AvroSchema) -> Wire {
    match s {
        AvroSchema::Null => Wire::Null,
        AvroSchema::Boolean => Wire::Bool,
        AvroSchema::Int | AvroSchema::Date | AvroSchema::TimeMillis => Wire::Int,
        AvroSchema::Long
        | AvroSchema::TimeMicros
        | AvroSchema::TimestampMillis
        | AvroSchema::TimestampMicros
        | AvroSchema::TimestampNanos
        | AvroSchema::LocalTimestampMillis
        | AvroSchema::LocalTimestampMicros
        | AvroSchema::LocalTimestampNanos => Wire::Long,
        AvroSchema::Float => Wire::Float,
        AvroSchema::Double => Wire::Double,
        AvroSchema::Bytes | AvroSchema::BigDecimal => Wire::Bytes,
        AvroSchema::String | AvroSchema::Uuid => Wire::Str,
        AvroSchema::Fixed(f) => Wire::Fixed(f.size),
        AvroSchema::Duration => Wire::Fixed(12),
        AvroSchema::Decimal(d) => wire_of(&d.inner),
        AvroSchema::Enum(_) => Wire::Enum,
        AvroSchema::Array(_) => Wire::Array,
        AvroSchema::Map(_) => Wire::Map,
        AvroSchema::Record(_) => Wire::Record,
        AvroSchema::Union(_) | AvroSchema::Ref { .. } => Wire::Union,
    }
}

fn named_parts(s: &AvroSchema) -> Option<(&Name, Option<&Vec<Alias>>)> {
    match s {
        AvroSchema::Record(r) => Some((&r.name, r.aliases.as_ref())),
        AvroSchema::Enum(e) => Some((&e.name, e.aliases.as_ref())),
        AvroSchema::Fixed(f) => Some((&f.name, f.aliases.as_ref())),
        AvroSchema::Decimal(d) => named_parts(&d.inner),
        _ => None,
    }
}

/// Named types match when their unqualified names agree, or the reader lists the
/// writer's full name among its aliases (an unqualified alias is in the reader's
/// namespace), as Java's `SchemaCompatibility.schemaNameEquals` has it.
fn names_match(w: &AvroSchema, r: &AvroSchema) -> bool {
    fn namespace(ns: Option<&String>) -> Option<&str> {
        ns.map(String::as_str).filter(|ns| !ns.is_empty())
    }
    match (named_parts(w), named_parts(r)) {
        (Some((wn, _)), Some((rn, raliases))) => {
            wn.name == rn.name
                || raliases.is_some_and(|al| {
                    al.iter().any(|a| {
                        let alias_namespace = a.namespace();
                        a.name() == wn.name
                            && namespace(alias_namespace.as_ref().or(rn.namespace.as_ref()))
                                == namespace(wn.namespace.as_ref())
                    })
                })
        }
        _ => true,
    }
}

fn union_labels(branches: &[AvroSchema]) -> String {
    branches
        .iter()
        .map(type_label)
        .collect::<Vec<_>>()
        .join(", ")
}

fn label(s: &AvroSchema) -> Box<str> {
    s.name()
        .map(|n| n.name.clone())
        .unwrap_or_else(|| type_label(s))
        .into_boxed_str()
}

impl Resolver {
    fn push(&mut self, n: DNode) -> usize {
        self.nodes.push(n);
        self.nodes.len() - 1
    }

    fn resolve(&mut self, w: &AvroSchema, wn: &Names, r: &AvroSchema, rn: &Names) -> Result<usize> {
        let w = wn.deref(w)?;
        let r = rn.deref(r)?;
        let key = (
            w as *const AvroSchema as usize,
            r as *const AvroSchema as usize,
        );
        let recursive = matches!((w, r), (AvroSchema::Record(_), AvroSchema::Record(_)));
        if recursive {
            if let Some(&i) = self.memo.get(&key) {
                return Ok(i);
            }
            let i = self.push(DNode::Pending);
            self.memo.insert(key, i);
            match self.build(w, wn, r, rn) {
                Ok(n) => {
                    self.nodes[i] = n;
                    Ok(i)
                }
                Err(e) => {
                    self.memo.remove(&key);
                    Err(e)
                }
            }
        } else {
            let n = self.build(w, wn, r, rn)?;
            Ok(self.push(n))
        }
    }

    fn build(&mut self, w: &AvroSchema, wn: &Names, r: &AvroSchema, rn: &Names) -> Result<DNode> {
        if let AvroSchema::Union(ru) = r {
            if let AvroSchema::Union(wu) = w {
                let mut branches = Vec::with_capacity(wu.variants().len());
                for wb in wu.variants() {
                    branches.push(match self.find_branch(wb, wn, ru.variants(), rn)? {
                        Some((ri, node, rb)) => WBranch::Ok {
                            reader_index: Some(ri as u32),
                            node,
                            null: matches!(rb, AvroSchema::Null),
                            label: label(rb),
                        },
                        None if self.strict => {
                            return Err(AvroError::incompatible(format!(
                                "writer union branch {} matches no branch of the reader union [{}]",
                                type_label(wn.deref(wb)?),
                                union_labels(ru.variants())
                            )));
                        }
                        None => WBranch::Unresolvable(type_label(wn.deref(wb)?).into()),
                    });
                }
                return Ok(DNode::WUnion(branches.into()));
            }
            return match self.find_branch(w, wn, ru.variants(), rn)? {
                Some((ri, node, rb)) => Ok(DNode::RUnion {
                    index: ri as u32,
                    node,
                    label: label(rb),
                    null: matches!(rb, AvroSchema::Null),
                }),
                None => Err(AvroError::incompatible(format!(
                    "writer type {} matches no branch of the reader union [{}]",
                    type_label(w),
                    union_labels(ru.variants())
                ))),
            };
        }
        if let AvroSchema::Union(wu) = w {
            let mut branches = Vec::with_capacity(wu.variants().len());
            for wb in wu.variants() {
                branches.push(match self.resolve(wb, wn, r, rn) {
                    Ok(node) => WBranch::Ok {
                        reader_index: None,
                        node,
                        null: matches!(r, AvroSchema::Null),
                        label: label(r),
                    },
                    Err(e) if self.strict => return Err(e),
                    Err(_) => WBranch::Unresolvable(type_label(wn.deref(wb)?).into()),
                });
            }
            return Ok(DNode::WUnion(branches.into()));
        }
        let lg = lg_of(r);
        let incompatible = || {
            AvroError::incompatible(format!(
                "writer type {} cannot be read as {}",
                type_label(w),
                type_label(r)
            ))
        };
        Ok(match (wire_of(w), wire_of(r)) {
            (Wire::Null, Wire::Null) => DNode::Null,
            (Wire::Bool, Wire::Bool) => DNode::Boolean,
            (Wire::Int, Wire::Int) => DNode::Int(lg),
            (Wire::Int, Wire::Long) => DNode::IntToLong(lg),
            (Wire::Int, Wire::Float) => DNode::IntToFloat,
            (Wire::Int, Wire::Double) => DNode::IntToDouble,
            (Wire::Long, Wire::Long) => DNode::Long(lg),
            (Wire::Long, Wire::Float) => DNode::LongToFloat,
            (Wire::Long, Wire::Double) => DNode::LongToDouble,
            (Wire::Float, Wire::Float) => DNode::Float,
            (Wire::Float, Wire::Double) => DNode::FloatToDouble,
            (Wire::Double, Wire::Double) => DNode::Double,
            (Wire::Bytes, Wire::Bytes) => DNode::Bytes(lg),
            (Wire::Bytes, Wire::Str) => DNode::BytesToString(lg),
            (Wire::Str, Wire::Str) => DNode::String(lg),
            (Wire::Str, Wire::Bytes) => DNode::StringToBytes(lg),
            (Wire::Fixed(ws), Wire::Fixed(rs)) => {
                if !names_match(w, r) {
                    return Err(AvroError::incompatible(format!(
                        "writer {} and reader {} have different names",
                        type_label(w),
                        type_label(r)
                    )));
                }
                if ws != rs {
                    return Err(AvroError::incompatible(format!(
                        "writer {} has size {ws} but reader {} has size {rs}",
                        type_label(w),
                        type_label(r)
                    )));
                }
                DNode::Fixed { size: rs, lg }
            }
            (Wire::Enum, Wire::Enum) => {
                let (AvroSchema::Enum(we), AvroSchema::Enum(re)) = (w, r) else {
                    return Err(incompatible());
                };
                if !names_match(w, r) {
                    return Err(AvroError::incompatible(format!(
                        "writer enum {} and reader enum {} have different names",
                        we.name.fullname(None),
                        re.name.fullname(None)
                    )));
                }
                let default = re
                    .default
                    .as_ref()
                    .and_then(|d| re.symbols.iter().position(|s| s == d));
                let map = we
                    .symbols
                    .iter()
                    .map(|s| {
                        re.symbols
                            .iter()
                            .position(|rs| rs == s)
                            .or(default)
                            .map(|i| i as u32)
                    })
                    .collect::<Box<[Option<u32>]>>();
                if self.strict && map.iter().any(Option::is_none) {
                    let missing: Vec<&str> = we
                        .symbols
                        .iter()
                        .zip(&map)
                        .filter(|(_, to)| to.is_none())
                        .map(|(s, _)| s.as_str())
                        .collect();
                    return Err(AvroError::incompatible(format!(
                        "reader enum {} lacks the writer's symbols [{}] and declares no default",
                        re.name.fullname(None),
                        missing.join(", ")
                    )));
                }
                DNode::Enum(Box::new(DEnum {
                    name: re.name.name.as_str().into(),
                    map,
                    writer_symbols: we.symbols.iter().map(|s| s.as_str().into()).collect(),
                    symbols: re.symbols.iter().map(|s| s.as_str().into()).collect(),
                }))
            }
            (Wire::Array, Wire::Array) => {
                let (AvroSchema::Array(wa), AvroSchema::Array(ra)) = (w, r) else {
                    return Err(incompatible());
                };
                DNode::Array(
                    self.resolve(&wa.items, wn, &ra.items, rn)
                        .map_err(|e| e.in_field("[]"))?,
                )
            }
            (Wire::Map, Wire::Map) => {
                let (AvroSchema::Map(wm), AvroSchema::Map(rm)) = (w, r) else {
                    return Err(incompatible());
                };
                DNode::Map(
                    self.resolve(&wm.types, wn, &rm.types, rn)
                        .map_err(|e| e.in_field("{}"))?,
                )
            }
            (Wire::Record, Wire::Record) => {
                let (AvroSchema::Record(wr), AvroSchema::Record(rr)) = (w, r) else {
                    return Err(incompatible());
                };
                if !names_match(w, r) {
                    return Err(AvroError::incompatible(format!(
                        "writer record {} and reader record {} have different names",
                        wr.name.fullname(None),
                        rr.name.fullname(None)
                    )));
                }
                let mut matched = vec![false; rr.fields.len()];
                let mut steps = Vec::with_capacity(wr.fields.len());
                for wf in &wr.fields {
                    let pos = rr
                        .fields
                        .iter()
                        .position(|rf| rf.name == wf.name)
                        .or_else(|| {
                            rr.fields.iter().position(|rf| {
                                rf.aliases.as_ref().is_some_and(|a| a.contains(&wf.name))
                            })
                        });
                    match pos {
                        Some(pos) if !matched[pos] => {
                            matched[pos] = true;
                            let rf = &rr.fields[pos];
                            let node = self
                                .resolve(&wf.schema, wn, &rf.schema, rn)
                                .map_err(|e| e.in_field(&rf.name))?;
                            steps.push(Step::Read { pos, node });
                        }
                        _ => {
                            let node = self.resolve(&wf.schema, wn, &wf.schema, wn)?;
                            self.skip_names.push(wf.name.as_str().into());
                            steps.push(Step::Skip {
                                node,
                                name_of_writer_field: self.skip_names.len() - 1,
                            });
                        }
                    }
                }
                let mut defaults = Vec::new();
                for (pos, rf) in rr.fields.iter().enumerate() {
                    if matched[pos] {
                        continue;
                    }
                    let Some(d) = &rf.default else {
                        return Err(AvroError::incompatible(format!(
                            "reader field is not in the writer schema of record {} and has no default",
                            rr.name.fullname(None)
                        ))
                        .in_field(&rf.name));
                    };
                    let value =
                        super::value::json_to_value_named(d, &rf.schema, rn).map_err(|e| {
                            AvroError::incompatible(format!(
                                "default does not match the field type: {e}"
                            ))
                            .in_field(&rf.name)
                        })?;
                    let enc = EncodePlan::with_names(&rf.schema, rn)?;
                    let mut bytes = Vec::new();
                    super::value::encode_value(&enc, &value, &mut bytes).map_err(|e| {
                        AvroError::incompatible(format!(
                            "default does not match the field type: {e}"
                        ))
                        .in_field(&rf.name)
                    })?;
                    let node = self.resolve(&rf.schema, rn, &rf.schema, rn)?;
                    defaults.push(DDefault {
                        pos,
                        bytes: bytes.into_boxed_slice(),
                        node,
                    });
                }
                DNode::Record(Box::new(DRecord {
                    names: rr.fields.iter().map(|f| f.name.as_str().into()).collect(),
                    steps: steps.into(),
                    defaults: defaults.into(),
                    positional_yes: AtomicUsize::new(0),
                    positional_no: AtomicUsize::new(0),
                }))
            }
            _ => return Err(incompatible()),
        })
    }

    /// Picks the reader union branch for a writer (non-union) schema: first
    /// a branch of the same type (and name, for named types), then the first
    /// branch the writer type can be promoted to.
    fn find_branch<'r>(
        &mut self,
        w: &AvroSchema,
        wn: &Names,
        rbranches: &'r [AvroSchema],
        rn: &'r Names,
    ) -> Result<Option<(usize, usize, &'r AvroSchema)>> {
        let w = wn.deref(w)?;
        let ww = wire_of(w);
        for (i, rb) in rbranches.iter().enumerate() {
            let rbd = rn.deref(rb)?;
            let same = match (ww, wire_of(rbd)) {
                (Wire::Fixed(_), Wire::Fixed(_)) => names_match(w, rbd),
                (a, b) => a == b && names_match(w, rbd) && kind_of(w) == kind_of(rbd),
            };
            if same && let Ok(node) = self.resolve(w, wn, rbd, rn) {
                return Ok(Some((i, node, rbd)));
            }
        }
        for (i, rb) in rbranches.iter().enumerate() {
            let rbd = rn.deref(rb)?;
            if named_parts(w).is_some() && named_parts(rbd).is_some() && !names_match(w, rbd) {
                continue;
            }
            if let Ok(node) = self.resolve(w, wn, rbd, rn) {
                return Ok(Some((i, node, rbd)));
            }
        }
        Ok(None)
    }
}
