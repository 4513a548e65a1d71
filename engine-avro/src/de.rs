//! The reader's hot path: a `serde::Deserializer` driven by a [`DecodePlan`],
//! reading Avro binary directly from a byte slice (no value tree), plus the
//! plan-driven skipping and array/map block framing shared with the generic
//! value decoder.

use serde::de::value::BorrowedStrDeserializer;
use serde::de::{self, DeserializeOwned, DeserializeSeed, IntoDeserializer, Visitor};
use serde::forward_to_deserialize_any;

use super::error::{AvroError, BoxedError, DResult, Result};
use super::resolve::{DNode, DRecord, DecodePlan, Step, WBranch};
use super::wire::{
    read_bool, read_bytes, read_f32, read_f64, read_fixed, read_int, read_long, read_str,
};

/// Nesting limit for records/arrays/maps, so hostile input cannot overflow
/// the stack through a recursive schema.
pub(crate) const MAX_DEPTH: u32 = 128;

/// Upper bound on the number of items of a zero-width type (e.g. `null`) in
/// one array/map: such items consume no input, so the remaining input length
/// cannot bound them.
pub(crate) const MAX_ZERO_WIDTH_ITEMS: usize = 1 << 20;

impl DecodePlan {
    /// Decodes one Avro datum into `T`. The whole slice must be consumed.
    #[inline]
    pub fn decode<T: DeserializeOwned>(&self, bytes: &[u8]) -> Result<T> {
        self.decode_borrowed(bytes)
    }

    #[inline]
    /// Like [`DecodePlan::decode`], but `T` may borrow `&str`/`&[u8]` from
    /// the input (zero-copy).
    pub fn decode_borrowed<'de, T: de::Deserialize<'de>>(&'de self, bytes: &'de [u8]) -> Result<T> {
        let mut input = bytes;
        let v = T::deserialize(De {
            plan: self,
            node: self.root,
            input: &mut input,
            depth: 0,
        })
        .map_err(AvroError::from)?;
        if !input.is_empty() {
            return Err(AvroError::TrailingBytes { count: input.len() });
        }
        Ok(v)
    }
}

/// Builds a decode error (boxed for the hot path's small `Result`s).
#[cold]
fn derr(msg: impl Into<String>) -> BoxedError {
    AvroError::decode(msg).into()
}

#[cold]
fn bad_branch(i: i64, n: usize) -> BoxedError {
    AvroError::decode(format!(
        "union branch index {i} out of range (union has {n} branches)"
    ))
    .into()
}

#[cold]
fn unresolvable(label: &str) -> BoxedError {
    AvroError::decode(format!(
        "data uses writer union branch {label}, which the reader schema cannot represent"
    ))
    .into()
}

#[cold]
fn too_deep() -> BoxedError {
    AvroError::decode(format!("nesting deeper than {MAX_DEPTH} levels")).into()
}

/// Reads a writer union branch index and returns the branch.
#[inline(always)]
pub(crate) fn read_branch<'p>(branches: &'p [WBranch], input: &mut &[u8]) -> DResult<&'p WBranch> {
    let i = read_long(input)?;
    match usize::try_from(i).ok().and_then(|u| branches.get(u)) {
        Some(b @ WBranch::Ok { .. }) => Ok(b),
        Some(WBranch::Unresolvable(l)) => Err(unresolvable(l)),
        None => Err(bad_branch(i, branches.len())),
    }
}

/// Reads an enum index and maps it to the reader symbol index.
#[inline(always)]
pub(crate) fn read_enum(e: &super::resolve::DEnum, input: &mut &[u8]) -> DResult<usize> {
    let i = read_long(input)?;
    match usize::try_from(i).ok().and_then(|u| e.map.get(u)) {
        Some(Some(r)) => Ok(*r as usize),
        Some(None) => Err(derr(format!(
            "symbol `{}` is not in reader enum {} and the reader enum has no default",
            usize::try_from(i)
                .ok()
                .and_then(|u| e.writer_symbols.get(u))
                .map(|s| &**s)
                .unwrap_or("?"),
            e.name
        ))),
        None => Err(derr(format!(
            "enum index {i} out of range for enum {} ({} symbols)",
            e.name,
            e.map.len()
        ))),
    }
}

/// Array/map block framing: returns the item count of the next block
/// (0 at the end), bounded by the remaining input.
#[inline]
pub(crate) fn next_block(
    input: &mut &[u8],
    nonzero_width: bool,
    zero_total: &mut usize,
) -> DResult<usize> {
    let raw = read_long(input)?;
    if raw == 0 {
        return Ok(0);
    }
    let count = if raw < 0 {
        // A negative count is followed by the block's size in bytes.
        read_long(input)?;
        raw.unsigned_abs()
    } else {
        raw as u64
    };
    let count = usize::try_from(count).unwrap_or(usize::MAX);
    if nonzero_width {
        if count > input.len() {
            return Err(derr(format!(
                "block claims {count} items but only {} bytes remain",
                input.len()
            )));
        }
    } else {
        *zero_total = zero_total.saturating_add(count);
        if *zero_total > MAX_ZERO_WIDTH_ITEMS {
            return Err(derr(format!(
                "more than {MAX_ZERO_WIDTH_ITEMS} zero-width items in one array/map"
            )));
        }
    }
    Ok(count)
}

/// Consumes one value of `node` without producing anything.
pub(crate) fn skip(plan: &DecodePlan, node: usize, input: &mut &[u8], depth: u32) -> DResult<()> {
    match &plan.nodes[node] {
        DNode::Null | DNode::Pending => {}
        DNode::Boolean => {
            read_bool(input)?;
        }
        DNode::Int(_) | DNode::IntToLong(_) | DNode::IntToFloat | DNode::IntToDouble => {
            read_int(input)?;
        }
        DNode::Long(_) | DNode::LongToFloat | DNode::LongToDouble => {
            read_long(input)?;
        }
        DNode::Float | DNode::FloatToDouble => {
            read_fixed(input, 4, "float")?;
        }
        DNode::Double => {
            read_fixed(input, 8, "double")?;
        }
        DNode::Bytes(_) | DNode::String(_) | DNode::StringToBytes(_) | DNode::BytesToString(_) => {
            read_bytes(input)?;
        }
        DNode::Fixed { size, .. } => {
            read_fixed(input, *size, "fixed")?;
        }
        DNode::Enum(e) => {
            read_enum(e, input)?;
        }
        DNode::Array(item) => {
            if depth >= MAX_DEPTH {
                return Err(too_deep());
            }
            let nz = plan.nonzero_width[*item];
            let mut zt = 0;
            let mut i = 0usize;
            loop {
                let n = next_block(input, nz, &mut zt)?;
                if n == 0 {
                    break;
                }
                for _ in 0..n {
                    skip(plan, *item, input, depth + 1).map_err(|e| e.at_index(i))?;
                    i += 1;
                }
            }
        }
        DNode::Map(values) => {
            if depth >= MAX_DEPTH {
                return Err(too_deep());
            }
            let mut zt = 0;
            loop {
                let n = next_block(input, true, &mut zt)?;
                if n == 0 {
                    break;
                }
                for _ in 0..n {
                    let k = read_str(input)?;
                    skip(plan, *values, input, depth + 1).map_err(|e| e.at_key(k))?;
                }
            }
        }
        DNode::Record(r) => {
            if depth >= MAX_DEPTH {
                return Err(too_deep());
            }
            for s in r.steps.iter() {
                match *s {
                    Step::Read { pos, node } => {
                        skip(plan, node, input, depth + 1).map_err(|e| e.in_field(&r.names[pos]))?
                    }
                    Step::Skip {
                        node,
                        name_of_writer_field,
                    } => skip(plan, node, input, depth + 1)
                        .map_err(|e| e.in_field(&plan.skip_names[name_of_writer_field]))?,
                }
            }
        }
        DNode::WUnion(b) => {
            if let WBranch::Ok { node, .. } = read_branch(b, input)? {
                skip(plan, *node, input, depth)?;
            }
        }
        DNode::RUnion { node, .. } => skip(plan, *node, input, depth)?,
    }
    Ok(())
}

/// Deserializer positioned at one plan node.
pub(crate) struct De<'de, 'a> {
    plan: &'de DecodePlan,
    node: usize,
    input: &'a mut &'de [u8],
    depth: u32,
}

impl<'de, 'a> De<'de, 'a> {
    /// Steps through unions to the concrete node, consuming branch indices.
    #[inline(always)]
    fn concrete(&mut self) -> DResult<&'de DNode> {
        let nodes = &self.plan.nodes;
        let mut node = self.node;
        loop {
            match &nodes[node] {
                DNode::WUnion(b) => {
                    if let WBranch::Ok { node: n, .. } = read_branch(b, self.input)? {
                        node = *n;
                    }
                }
                DNode::RUnion { node: n, .. } => node = *n,
                n => {
                    self.node = node;
                    return Ok(n);
                }
            }
        }
    }

    fn enter(&self) -> DResult<u32> {
        if self.depth >= MAX_DEPTH {
            return Err(too_deep());
        }
        Ok(self.depth + 1)
    }
}

#[cold]
fn pending() -> BoxedError {
    AvroError::decode("internal error: unresolved plan node").into()
}

impl<'de> de::Deserializer<'de> for De<'de, '_> {
    type Error = BoxedError;

    #[inline]
    fn deserialize_any<V: Visitor<'de>>(mut self, visitor: V) -> DResult<V::Value> {
        match self.concrete()? {
            DNode::Null => visitor.visit_unit(),
            DNode::Boolean => visitor.visit_bool(read_bool(self.input)?),
            DNode::Int(_) => visitor.visit_i32(read_int(self.input)?),
            DNode::Long(_) => visitor.visit_i64(read_long(self.input)?),
            DNode::IntToLong(_) => visitor.visit_i64(read_int(self.input)? as i64),
            DNode::IntToFloat => visitor.visit_f32(read_int(self.input)? as f32),
            DNode::IntToDouble => visitor.visit_f64(read_int(self.input)? as f64),
            DNode::LongToFloat => visitor.visit_f32(read_long(self.input)? as f32),
            DNode::LongToDouble => visitor.visit_f64(read_long(self.input)? as f64),
            DNode::Float => visitor.visit_f32(read_f32(self.input)?),
            DNode::FloatToDouble => visitor.visit_f64(read_f32(self.input)? as f64),
            DNode::Double => visitor.visit_f64(read_f64(self.input)?),
            // Self-describing targets (serde_json::Value...) rarely accept
            // raw bytes, so `any` offers them as a sequence of u8; byte-aware
            // targets ask via deserialize_bytes and get the borrowed slice.
            DNode::Bytes(_) | DNode::StringToBytes(_) => visitor.visit_seq(
                de::value::SeqDeserializer::new(read_bytes(self.input)?.iter().copied()),
            ),
            DNode::String(_) | DNode::BytesToString(_) => {
                visitor.visit_borrowed_str(read_str(self.input)?)
            }
            DNode::Fixed { size, .. } => visitor.visit_seq(de::value::SeqDeserializer::new(
                read_fixed(self.input, *size, "fixed")?.iter().copied(),
            )),
            DNode::Enum(e) => {
                let i = read_enum(e, self.input)?;
                visitor.visit_borrowed_str(&e.symbols[i])
            }
            DNode::Array(item) => {
                let depth = self.enter()?;
                let mut acc = ArrayAcc {
                    plan: self.plan,
                    item: *item,
                    nonzero: self.plan.nonzero_width[*item],
                    input: self.input,
                    depth,
                    left: 0,
                    done: false,
                    index: 0,
                    zero_total: 0,
                };
                acc.refill()?;
                let v = visitor.visit_seq(&mut acc)?;
                acc.finish()?;
                Ok(v)
            }
            DNode::Map(values) => {
                let depth = self.enter()?;
                let mut acc = MapAcc {
                    plan: self.plan,
                    values: *values,
                    nonzero: self.plan.nonzero_width[*values],
                    input: self.input,
                    depth,
                    left: 0,
                    done: false,
                    key: "",
                    zero_total: 0,
                };
                acc.refill()?;
                let v = visitor.visit_map(&mut acc)?;
                acc.finish()?;
                Ok(v)
            }
            DNode::Record(r) => {
                let depth = self.enter()?;
                let mut acc = RecordAcc {
                    plan: self.plan,
                    rec: r,
                    input: self.input,
                    depth,
                    step: 0,
                    def: 0,
                    cur_node: 0,
                    cur_name: "",
                    in_default: None,
                };
                let v = visitor.visit_map(&mut acc)?;
                acc.finish()?;
                Ok(v)
            }
            DNode::WUnion(_) | DNode::RUnion { .. } | DNode::Pending => Err(pending()),
        }
    }

    #[inline]
    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> DResult<V::Value> {
        match &self.plan.nodes[self.node] {
            DNode::WUnion(b) => match read_branch(b, self.input)? {
                WBranch::Ok { null: true, .. } => visitor.visit_none(),
                WBranch::Ok { node, .. } => visitor.visit_some(De {
                    plan: self.plan,
                    node: *node,
                    input: self.input,
                    depth: self.depth,
                }),
                WBranch::Unresolvable(l) => Err(unresolvable(l)),
            },
            DNode::RUnion { null: true, .. } | DNode::Null => visitor.visit_none(),
            DNode::RUnion { node, .. } => visitor.visit_some(De {
                plan: self.plan,
                node: *node,
                input: self.input,
                depth: self.depth,
            }),
            _ => visitor.visit_some(self),
        }
    }

    fn deserialize_enum<V: Visitor<'de>>(
        mut self,
        _name: &'static str,
        variants: &'static [&'static str],
        visitor: V,
    ) -> DResult<V::Value> {
        // A Rust enum whose variants are named after union branches
        // (externally tagged, e.g. `enum V { Int(i32), Str(String) }`).
        let union_variant = |label: &str| {
            variants
                .iter()
                .find(|v| v.eq_ignore_ascii_case(label))
                .copied()
        };
        match &self.plan.nodes[self.node] {
            DNode::WUnion(b) => {
                let br = read_branch(b, self.input)?;
                if let WBranch::Ok { node, label, .. } = br {
                    self.node = *node;
                    if let Some(v) = union_variant(label) {
                        return visitor.visit_enum(UnionVariant {
                            variant: v,
                            de: self,
                        });
                    }
                }
            }
            DNode::RUnion { node, label, .. } => {
                self.node = *node;
                if let Some(v) = union_variant(label) {
                    return visitor.visit_enum(UnionVariant {
                        variant: v,
                        de: self,
                    });
                }
            }
            _ => {}
        }
        match self.concrete()? {
            DNode::Enum(e) => {
                let i = read_enum(e, self.input)?;
                visitor.visit_enum(Symbol(&e.symbols[i]))
            }
            DNode::String(_) | DNode::BytesToString(_) => {
                visitor.visit_enum(Symbol(read_str(self.input)?))
            }
            _ => Err(derr(format!(
                "cannot read this Avro type as a Rust enum (variants: {})",
                variants.join(", ")
            ))),
        }
    }

    fn deserialize_seq<V: Visitor<'de>>(mut self, visitor: V) -> DResult<V::Value> {
        match self.concrete()? {
            DNode::Bytes(_) | DNode::StringToBytes(_) => {
                let b = read_bytes(self.input)?;
                visitor.visit_seq(de::value::SeqDeserializer::new(b.iter().copied()))
            }
            DNode::Fixed { size, .. } => {
                let b = read_fixed(self.input, *size, "fixed")?;
                visitor.visit_seq(de::value::SeqDeserializer::new(b.iter().copied()))
            }
            _ => self.deserialize_any(visitor),
        }
    }

    fn deserialize_bytes<V: Visitor<'de>>(mut self, visitor: V) -> DResult<V::Value> {
        match self.concrete()? {
            DNode::Bytes(_)
            | DNode::StringToBytes(_)
            | DNode::String(_)
            | DNode::BytesToString(_) => visitor.visit_borrowed_bytes(read_bytes(self.input)?),
            DNode::Fixed { size, .. } => {
                visitor.visit_borrowed_bytes(read_fixed(self.input, *size, "fixed")?)
            }
            _ => self.deserialize_any(visitor),
        }
    }

    fn deserialize_byte_buf<V: Visitor<'de>>(self, visitor: V) -> DResult<V::Value> {
        self.deserialize_bytes(visitor)
    }

    fn deserialize_tuple<V: Visitor<'de>>(self, _len: usize, visitor: V) -> DResult<V::Value> {
        self.deserialize_seq(visitor)
    }

    fn deserialize_tuple_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _len: usize,
        visitor: V,
    ) -> DResult<V::Value> {
        self.deserialize_seq(visitor)
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> DResult<V::Value> {
        visitor.visit_newtype_struct(self)
    }

    fn deserialize_ignored_any<V: Visitor<'de>>(self, visitor: V) -> DResult<V::Value> {
        skip(self.plan, self.node, self.input, self.depth)?;
        visitor.visit_unit()
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        fields: &'static [&'static str],
        visitor: V,
    ) -> DResult<V::Value> {
        if let DNode::Record(r) = &self.plan.nodes[self.node]
            && r.positional(fields)
        {
            let depth = self.enter()?;
            let mut acc = RecordSeq {
                plan: self.plan,
                rec: r,
                input: self.input,
                depth,
                step: 0,
            };
            let v = visitor.visit_seq(&mut acc)?;
            acc.finish()?;
            return Ok(v);
        }
        self.deserialize_any(visitor)
    }

    forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
        unit unit_struct map identifier
    }
}

/// A record read positionally into a struct whose fields are the wire's, in order.
struct RecordSeq<'de, 'a> {
    plan: &'de DecodePlan,
    rec: &'de DRecord,
    input: &'a mut &'de [u8],
    depth: u32,
    step: usize,
}

impl RecordSeq<'_, '_> {
    fn finish(&mut self) -> DResult<()> {
        skip_remaining_steps(self.plan, self.rec, &mut self.step, self.input, self.depth)
    }
}

/// Consumes the writer fields from `step` on that the visitor did not ask for, so the
/// input stays in sync.
fn skip_remaining_steps(
    plan: &DecodePlan,
    rec: &DRecord,
    step: &mut usize,
    input: &mut &[u8],
    depth: u32,
) -> DResult<()> {
    while let Some(s) = rec.steps.get(*step) {
        *step += 1;
        let (Step::Read { node, .. } | Step::Skip { node, .. }) = *s;
        skip(plan, node, input, depth)?;
    }
    Ok(())
}

impl<'de> de::SeqAccess<'de> for RecordSeq<'de, '_> {
    type Error = BoxedError;

    #[inline]
    fn next_element_seed<T: DeserializeSeed<'de>>(&mut self, seed: T) -> DResult<Option<T::Value>> {
        let rec = self.rec;
        while let Some(s) = rec.steps.get(self.step) {
            self.step += 1;
            match *s {
                Step::Read { pos, node } => {
                    return seed
                        .deserialize(De {
                            plan: self.plan,
                            node,
                            input: self.input,
                            depth: self.depth,
                        })
                        .map(Some)
                        .map_err(|e| e.in_field(&rec.names[pos]));
                }
                Step::Skip {
                    node,
                    name_of_writer_field,
                } => skip(self.plan, node, self.input, self.depth)
                    .map_err(|e| e.in_field(&self.plan.skip_names[name_of_writer_field]))?,
            }
        }
        Ok(None)
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.rec.names.len())
    }
}

/// `EnumAccess` for an Avro enum symbol mapped onto a unit variant.
struct Symbol<'de>(&'de str);

impl<'de> de::EnumAccess<'de> for Symbol<'de> {
    type Error = BoxedError;
    type Variant = Self;
    fn variant_seed<S: DeserializeSeed<'de>>(self, seed: S) -> DResult<(S::Value, Self)> {
        let v = seed
            .deserialize(BorrowedStrDeserializer::<AvroError>::new(self.0))
            .map_err(|e| AvroError::decode(format!("enum symbol `{}`: {e}", self.0)))?;
        Ok((v, self))
    }
}

impl<'de> de::VariantAccess<'de> for Symbol<'de> {
    type Error = BoxedError;
    fn unit_variant(self) -> DResult<()> {
        Ok(())
    }
    fn newtype_variant_seed<S: DeserializeSeed<'de>>(self, _seed: S) -> DResult<S::Value> {
        Err(derr(format!("enum symbol `{}` carries no data", self.0)))
    }
    fn tuple_variant<V: Visitor<'de>>(self, _len: usize, _visitor: V) -> DResult<V::Value> {
        Err(derr(format!("enum symbol `{}` carries no data", self.0)))
    }
    fn struct_variant<V: Visitor<'de>>(
        self,
        _fields: &'static [&'static str],
        _visitor: V,
    ) -> DResult<V::Value> {
        Err(derr(format!("enum symbol `{}` carries no data", self.0)))
    }
}

/// `EnumAccess` for a union branch mapped onto a data-carrying variant.
struct UnionVariant<'de, 'a> {
    variant: &'static str,
    de: De<'de, 'a>,
}

impl<'de, 'a> de::EnumAccess<'de> for UnionVariant<'de, 'a> {
    type Error = BoxedError;
    type Variant = De<'de, 'a>;
    fn variant_seed<S: DeserializeSeed<'de>>(self, seed: S) -> DResult<(S::Value, De<'de, 'a>)> {
        let v = seed.deserialize(IntoDeserializer::<AvroError>::into_deserializer(
            self.variant,
        ))?;
        Ok((v, self.de))
    }
}

impl<'de> de::VariantAccess<'de> for De<'de, '_> {
    type Error = BoxedError;
    fn unit_variant(self) -> DResult<()> {
        de::Deserialize::deserialize(self)
    }
    fn newtype_variant_seed<S: DeserializeSeed<'de>>(self, seed: S) -> DResult<S::Value> {
        seed.deserialize(self)
    }
    fn tuple_variant<V: Visitor<'de>>(self, _len: usize, visitor: V) -> DResult<V::Value> {
        de::Deserializer::deserialize_seq(self, visitor)
    }
    fn struct_variant<V: Visitor<'de>>(
        self,
        _fields: &'static [&'static str],
        visitor: V,
    ) -> DResult<V::Value> {
        de::Deserializer::deserialize_any(self, visitor)
    }
}

struct ArrayAcc<'de, 'a> {
    plan: &'de DecodePlan,
    item: usize,
    nonzero: bool,
    input: &'a mut &'de [u8],
    depth: u32,
    left: usize,
    done: bool,
    index: usize,
    zero_total: usize,
}

impl ArrayAcc<'_, '_> {
    #[inline]
    fn refill(&mut self) -> DResult<()> {
        while self.left == 0 && !self.done {
            let n = next_block(self.input, self.nonzero, &mut self.zero_total)?;
            if n == 0 {
                self.done = true;
            }
            self.left = n;
        }
        Ok(())
    }

    fn finish(&mut self) -> DResult<()> {
        if self.left > 0 || !self.done {
            return Err(derr("array has more items than the target type accepts"));
        }
        Ok(())
    }
}

impl<'de> de::SeqAccess<'de> for ArrayAcc<'de, '_> {
    type Error = BoxedError;

    #[inline]
    fn next_element_seed<S: DeserializeSeed<'de>>(&mut self, seed: S) -> DResult<Option<S::Value>> {
        self.refill()?;
        if self.left == 0 {
            return Ok(None);
        }
        self.left -= 1;
        let i = self.index;
        self.index += 1;
        seed.deserialize(De {
            plan: self.plan,
            node: self.item,
            input: self.input,
            depth: self.depth,
        })
        .map(Some)
        .map_err(|e| e.at_index(i))
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.left)
    }
}

struct MapAcc<'de, 'a> {
    plan: &'de DecodePlan,
    values: usize,
    nonzero: bool,
    input: &'a mut &'de [u8],
    depth: u32,
    left: usize,
    done: bool,
    key: &'de str,
    zero_total: usize,
}

impl MapAcc<'_, '_> {
    #[inline]
    fn refill(&mut self) -> DResult<()> {
        while self.left == 0 && !self.done {
            // Each entry has at least a key length byte.
            let n = next_block(self.input, true, &mut self.zero_total)?;
            if n == 0 {
                self.done = true;
            }
            self.left = n;
        }
        let _ = self.nonzero;
        Ok(())
    }

    fn finish(&mut self) -> DResult<()> {
        if self.left > 0 || !self.done {
            return Err(derr("map has more entries than the target type accepts"));
        }
        Ok(())
    }
}

impl<'de> de::MapAccess<'de> for MapAcc<'de, '_> {
    type Error = BoxedError;

    #[inline]
    fn next_key_seed<K: DeserializeSeed<'de>>(&mut self, seed: K) -> DResult<Option<K::Value>> {
        self.refill()?;
        if self.left == 0 {
            return Ok(None);
        }
        self.left -= 1;
        self.key = read_str(self.input)?;
        seed.deserialize(BorrowedStrDeserializer::new(self.key))
            .map(Some)
    }

    #[inline]
    fn next_value_seed<S: DeserializeSeed<'de>>(&mut self, seed: S) -> DResult<S::Value> {
        let key = self.key;
        seed.deserialize(De {
            plan: self.plan,
            node: self.values,
            input: self.input,
            depth: self.depth,
        })
        .map_err(|e| e.at_key(key))
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.left)
    }
}

/// Presents a record as a map keyed by reader field names: writer fields in
/// wire order (writer-only ones skipped), then reader-only fields from their
/// defaults.
struct RecordAcc<'de, 'a> {
    plan: &'de DecodePlan,
    rec: &'de DRecord,
    input: &'a mut &'de [u8],
    depth: u32,
    step: usize,
    def: usize,
    cur_node: usize,
    cur_name: &'de str,
    in_default: Option<&'de [u8]>,
}

impl RecordAcc<'_, '_> {
    /// Consumes whatever the visitor did not ask for, so the input stays in
    /// sync.
    fn finish(&mut self) -> DResult<()> {
        skip_remaining_steps(self.plan, self.rec, &mut self.step, self.input, self.depth)
    }
}

impl<'de> de::MapAccess<'de> for RecordAcc<'de, '_> {
    type Error = BoxedError;

    #[inline]
    fn next_key_seed<K: DeserializeSeed<'de>>(&mut self, seed: K) -> DResult<Option<K::Value>> {
        let rec = self.rec;
        while let Some(s) = rec.steps.get(self.step) {
            self.step += 1;
            match *s {
                Step::Read { pos, node } => {
                    self.cur_node = node;
                    self.cur_name = &rec.names[pos];
                    return seed
                        .deserialize(BorrowedStrDeserializer::new(self.cur_name))
                        .map(Some);
                }
                Step::Skip {
                    node,
                    name_of_writer_field,
                } => skip(self.plan, node, self.input, self.depth)
                    .map_err(|e| e.in_field(&self.plan.skip_names[name_of_writer_field]))?,
            }
        }
        if let Some(d) = rec.defaults.get(self.def) {
            self.def += 1;
            self.cur_node = d.node;
            self.cur_name = &rec.names[d.pos];
            self.in_default = Some(&d.bytes);
            return seed
                .deserialize(BorrowedStrDeserializer::new(self.cur_name))
                .map(Some);
        }
        Ok(None)
    }

    #[inline]
    fn next_value_seed<S: DeserializeSeed<'de>>(&mut self, seed: S) -> DResult<S::Value> {
        let name = self.cur_name;
        match self.in_default.take() {
            None => seed.deserialize(De {
                plan: self.plan,
                node: self.cur_node,
                input: self.input,
                depth: self.depth,
            }),
            Some(mut bytes) => seed.deserialize(De {
                plan: self.plan,
                node: self.cur_node,
                input: &mut bytes,
                depth: self.depth,
            }),
        }
        .map_err(|e| e.in_field(name))
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.rec.names.len())
    }
}
