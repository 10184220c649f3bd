//! Avro binary encoding, walked by schema without building values: zig-zag varints,
//! length-prefixed bytes, blocked arrays and maps. Hides the wire rules and the
//! limits that keep hostile input from exhausting memory, stack or time.
//!
//! One generic walker serves both validation (sink discards) and canonical
//! re-encoding (sink writes), so the two can never disagree about what is valid.

use std::fmt;

use crate::schema::model::{Node, NodeId, SchemaTree};

/// Deepest nesting of values followed by default before calling the input hostile
/// (records, arrays and maps inside one another; a union adds no level). A tree's
/// own limit is [`SchemaTree::max_depth`] (config `schema.max_depth`).
pub const MAX_DEPTH: usize = 256;
/// Most items in one array or map block when an item can encode to zero bytes.
pub const MAX_ZERO_SIZE_ITEMS: i64 = 1 << 20;

/// Why a datum does not match its schema.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DecodeErrorKind {
    /// The input ended inside a value.
    Truncated,
    /// A varint ran past 10 bytes.
    BadVarint,
    /// A negative or implausible length or count. (Values are never kept in
    /// errors: misread as the wrong type, they may be bytes of sensitive data.)
    BadLength,
    /// A string is not UTF-8.
    BadUtf8,
    /// A boolean byte other than 0 or 1.
    BadBoolean,
    /// A union branch index outside the union.
    BadUnionIndex,
    /// An enum index outside the symbols.
    BadEnumIndex,
    /// More zero-size items in one array or map than [`MAX_ZERO_SIZE_ITEMS`].
    TooManyItems,
    /// Values nested deeper than the limit it carries ([`SchemaTree::max_depth`]).
    TooDeep(usize),
    /// Bytes left over after the record.
    TrailingBytes(usize),
}

/// A decode error with the byte offset and the field path where it happened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodeError {
    pub kind: DecodeErrorKind,
    pub offset: usize,
    /// Field path from the root, filled in on the way out (`address.street`).
    pub path: String,
}

impl DecodeError {
    pub(crate) fn new(kind: DecodeErrorKind, offset: usize) -> Self {
        DecodeError {
            kind,
            offset,
            path: String::new(),
        }
    }

    /// Prefixes the path with an enclosing field or container step.
    pub fn within(mut self, step: &str) -> Self {
        if self.path.is_empty() {
            self.path = step.to_string();
        } else if self.path.starts_with('[') || self.path.starts_with('{') {
            self.path = format!("{step}{}", self.path);
        } else {
            self.path = format!("{step}.{}", self.path);
        }
        self
    }
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let what = match &self.kind {
            DecodeErrorKind::Truncated => "data ends inside a value".to_string(),
            DecodeErrorKind::BadVarint => "malformed varint".to_string(),
            DecodeErrorKind::BadLength => "invalid or implausible length".to_string(),
            DecodeErrorKind::BadUtf8 => "string is not valid UTF-8".to_string(),
            DecodeErrorKind::BadBoolean => "boolean byte is neither 0 nor 1".to_string(),
            DecodeErrorKind::BadUnionIndex => "union branch index out of range".to_string(),
            DecodeErrorKind::BadEnumIndex => "enum index out of range".to_string(),
            DecodeErrorKind::TooManyItems => {
                format!("more than {MAX_ZERO_SIZE_ITEMS} zero-size items in one array or map")
            }
            DecodeErrorKind::TooDeep(n) => {
                format!("values nested deeper than the limit of {n} levels (schema.max_depth)")
            }
            DecodeErrorKind::TrailingBytes(n) => format!("{n} bytes left after the record"),
        };
        if self.path.is_empty() {
            write!(f, "{what} at byte {}", self.offset)
        } else {
            write!(f, "{what} at byte {} (field {})", self.offset, self.path)
        }
    }
}

impl std::error::Error for DecodeError {}

/// A read position in one datum.
#[derive(Debug, Clone)]
pub struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    pub fn new(buf: &'a [u8]) -> Self {
        Cursor { buf, pos: 0 }
    }

    pub fn position(&self) -> usize {
        self.pos
    }

    pub fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    fn err(&self, kind: DecodeErrorKind) -> DecodeError {
        DecodeError::new(kind, self.pos)
    }

    /// Bytes from `start` to the current position.
    pub fn since(&self, start: usize) -> &'a [u8] {
        &self.buf[start..self.pos]
    }

    pub fn read_long(&mut self) -> Result<i64, DecodeError> {
        let mut value: u64 = 0;
        let mut shift = 0u32;
        loop {
            let b = *self
                .buf
                .get(self.pos)
                .ok_or_else(|| self.err(DecodeErrorKind::Truncated))?;
            self.pos += 1;
            if shift == 63 && b > 1 {
                return Err(self.err(DecodeErrorKind::BadVarint));
            }
            value |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(((value >> 1) as i64) ^ -((value & 1) as i64));
            }
            shift += 7;
            if shift > 63 {
                return Err(self.err(DecodeErrorKind::BadVarint));
            }
        }
    }

    pub fn read_int(&mut self) -> Result<i32, DecodeError> {
        let start = self.pos;
        let v = self.read_long()?;
        i32::try_from(v).map_err(|_| DecodeError::new(DecodeErrorKind::BadVarint, start))
    }

    pub fn read_exact(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        if self.remaining() < n {
            return Err(self.err(DecodeErrorKind::Truncated));
        }
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    /// A length-prefixed byte string.
    pub fn read_bytes(&mut self) -> Result<&'a [u8], DecodeError> {
        let at = self.pos;
        let n = self.read_long()?;
        if n < 0 {
            return Err(DecodeError::new(DecodeErrorKind::BadLength, at));
        }
        if n as u64 > self.remaining() as u64 {
            return Err(self.err(DecodeErrorKind::Truncated));
        }
        self.read_exact(n as usize)
    }

    pub fn read_str(&mut self) -> Result<&'a str, DecodeError> {
        let at = self.pos;
        let b = self.read_bytes()?;
        std::str::from_utf8(b).map_err(|_| DecodeError::new(DecodeErrorKind::BadUtf8, at))
    }

    /// Reads a union branch index and checks it against the union's size.
    pub fn read_branch(&mut self, branches: usize) -> Result<usize, DecodeError> {
        let at = self.pos;
        let i = self.read_long()?;
        if i < 0 || i as u64 >= branches as u64 {
            return Err(DecodeError::new(DecodeErrorKind::BadUnionIndex, at));
        }
        Ok(i as usize)
    }

    /// Reads an array/map block header: the item count, skipping the byte size that
    /// a negative count announces. Returns 0 at the end of the blocks.
    pub fn read_block_count(&mut self, min_item_size: usize) -> Result<usize, DecodeError> {
        let at = self.pos;
        let mut n = self.read_long()?;
        if n < 0 {
            n = n
                .checked_neg()
                .ok_or(DecodeError::new(DecodeErrorKind::BadLength, at))?;
            let size = self.read_long()?;
            if size < 0 {
                return Err(DecodeError::new(DecodeErrorKind::BadLength, at));
            }
        }
        let plausible = if min_item_size == 0 {
            n <= MAX_ZERO_SIZE_ITEMS
        } else {
            (n as u64).saturating_mul(min_item_size as u64) <= self.remaining() as u64
        };
        if !plausible {
            return Err(DecodeError::new(DecodeErrorKind::BadLength, at));
        }
        Ok(n as usize)
    }
}

/// Zero-size items (nulls, empty records) are the only ones whose count the input's
/// length does not bound; cap them per array or map across all its blocks.
#[inline]
pub fn check_item_total(min_item_size: usize, total: usize, at: usize) -> Result<(), DecodeError> {
    if min_item_size == 0 && total as i64 > MAX_ZERO_SIZE_ITEMS {
        return Err(DecodeError::new(DecodeErrorKind::TooManyItems, at));
    }
    Ok(())
}

/// Appends a zig-zag varint.
#[inline]
pub fn write_long(out: &mut Vec<u8>, v: i64) {
    let mut z = ((v << 1) ^ (v >> 63)) as u64;
    while z >= 0x80 {
        out.push((z as u8) | 0x80);
        z >>= 7;
    }
    out.push(z as u8);
}

/// Appends a length-prefixed byte string.
#[inline]
pub fn write_bytes(out: &mut Vec<u8>, b: &[u8]) {
    write_long(out, b.len() as i64);
    out.extend_from_slice(b);
}

/// Where the walker puts what it reads: nowhere (validation) or a buffer
/// (canonical re-encoding).
pub trait Sink {
    /// True for sinks that keep nothing, so containers need not buffer their items.
    const DISCARD: bool = false;
    fn long(&mut self, v: i64);
    fn raw(&mut self, b: &[u8]);
    fn bytes(&mut self, b: &[u8]) {
        self.long(b.len() as i64);
        self.raw(b);
    }
}

/// Discards everything: the walker only validates.
pub struct Discard;

impl Sink for Discard {
    const DISCARD: bool = true;
    #[inline]
    fn long(&mut self, _: i64) {}
    #[inline]
    fn raw(&mut self, _: &[u8]) {}
}

impl Sink for Vec<u8> {
    #[inline]
    fn long(&mut self, v: i64) {
        write_long(self, v)
    }
    #[inline]
    fn raw(&mut self, b: &[u8]) {
        self.extend_from_slice(b)
    }
}

/// Validates one value of `node` and writes its canonical encoding to `sink`
/// (minimal varints, arrays and maps as a single block). Errors carry the path.
pub fn walk<S: Sink>(
    tree: &SchemaTree,
    node: NodeId,
    cur: &mut Cursor<'_>,
    sink: &mut S,
    depth: usize,
) -> Result<(), DecodeError> {
    if depth > tree.max_depth {
        return Err(cur.err(DecodeErrorKind::TooDeep(tree.max_depth)));
    }
    match tree.node(node) {
        Node::Null => {}
        Node::Boolean => {
            let b = cur.read_exact(1)?[0];
            if b > 1 {
                return Err(DecodeError::new(DecodeErrorKind::BadBoolean, cur.pos - 1));
            }
            sink.raw(&[b]);
        }
        Node::Int => sink.long(i64::from(cur.read_int()?)),
        Node::Long => sink.long(cur.read_long()?),
        Node::Float => sink.raw(cur.read_exact(4)?),
        Node::Double => sink.raw(cur.read_exact(8)?),
        Node::Bytes => sink.bytes(cur.read_bytes()?),
        Node::String => sink.bytes(cur.read_str()?.as_bytes()),
        Node::Fixed { size, .. } => sink.raw(cur.read_exact(*size)?),
        Node::Enum { symbols, .. } => {
            let at = cur.pos;
            let i = cur.read_long()?;
            if i < 0 || i as u64 >= symbols.len() as u64 {
                return Err(DecodeError::new(DecodeErrorKind::BadEnumIndex, at));
            }
            sink.long(i);
        }
        Node::Union(branches) => {
            let i = cur.read_branch(branches.len())?;
            sink.long(i as i64);
            // The branch is the same value, not one nested in it.
            walk(tree, branches[i], cur, sink, depth)?;
        }
        Node::Array(item) => {
            let min = tree.min_size(*item);
            if S::DISCARD {
                array_items(tree, *item, min, cur, &mut Discard, depth)?;
            } else {
                let mut scratch = Vec::new();
                let total = array_items(tree, *item, min, cur, &mut scratch, depth)?;
                emit_block::<S>(sink, total, &scratch);
            }
        }
        Node::Map(value) => {
            if S::DISCARD {
                map_items(tree, *value, cur, &mut Discard, depth)?;
            } else {
                let mut scratch = Vec::new();
                let total = map_items(tree, *value, cur, &mut scratch, depth)?;
                emit_block::<S>(sink, total, &scratch);
            }
        }
        Node::Record(r) => {
            for f in &r.fields {
                walk(tree, f.node, cur, sink, depth + 1).map_err(|e| e.within(&f.name))?;
            }
        }
        Node::Pending => {}
    }
    Ok(())
}

/// Walks an array's blocks, writing the items (without block headers) to `items`.
fn array_items<I: Sink>(
    tree: &SchemaTree,
    item: NodeId,
    min: usize,
    cur: &mut Cursor<'_>,
    items: &mut I,
    depth: usize,
) -> Result<usize, DecodeError> {
    let mut total = 0usize;
    loop {
        let n = cur.read_block_count(min)?;
        if n == 0 {
            return Ok(total);
        }
        check_item_total(min, total + n, cur.pos)?;
        for _ in 0..n {
            walk(tree, item, cur, items, depth + 1).map_err(|e| e.within(&format!("[{total}]")))?;
            total += 1;
        }
    }
}

/// Walks a map's blocks, writing the entries (without block headers) to `items`.
fn map_items<I: Sink>(
    tree: &SchemaTree,
    value: NodeId,
    cur: &mut Cursor<'_>,
    items: &mut I,
    depth: usize,
) -> Result<usize, DecodeError> {
    let min = 1 + tree.min_size(value);
    let mut total = 0usize;
    loop {
        let n = cur.read_block_count(min)?;
        if n == 0 {
            return Ok(total);
        }
        for _ in 0..n {
            let key = cur.read_str()?;
            items.bytes(key.as_bytes());
            // Map keys are data (maybe sensitive): paths name the entry's position.
            walk(tree, value, cur, items, depth + 1)
                .map_err(|e| e.within(&format!("{{#{total}}}")))?;
            total += 1;
        }
    }
}

fn emit_block<S: Sink>(sink: &mut S, count: usize, items: &[u8]) {
    if count > 0 {
        sink.long(count as i64);
        sink.raw(items);
    }
    sink.long(0);
}

/// Validates that `datum` is exactly one value of the tree's root.
pub fn validate(tree: &SchemaTree, datum: &[u8]) -> Result<(), DecodeError> {
    let mut cur = Cursor::new(datum);
    walk(tree, tree.root, &mut cur, &mut Discard, 0)?;
    if cur.remaining() != 0 {
        return Err(cur.err(DecodeErrorKind::TrailingBytes(cur.remaining())));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn tree(s: serde_json::Value) -> SchemaTree {
        SchemaTree::compile(&s).unwrap()
    }

    #[test]
    fn varints_round_trip_at_the_edges() {
        for v in [
            0i64,
            -1,
            1,
            63,
            -64,
            64,
            i32::MAX as i64,
            i64::MAX,
            i64::MIN,
        ] {
            let mut out = Vec::new();
            write_long(&mut out, v);
            let mut c = Cursor::new(&out);
            assert_eq!(c.read_long().unwrap(), v);
            assert_eq!(c.remaining(), 0);
        }
    }

    #[test]
    fn overlong_varint_is_rejected() {
        let bad = [0xffu8; 11];
        assert_eq!(
            Cursor::new(&bad).read_long().unwrap_err().kind,
            DecodeErrorKind::BadVarint
        );
    }

    #[test]
    fn canonicalises_blocked_arrays_and_non_minimal_varints() {
        let t = tree(json!({"type": "array", "items": "int"}));
        // Two blocks, the first with a negative count and byte size; a 2-byte "1".
        let input = [0x03, 0x04, 0x02, 0x82, 0x00, 0x02, 0x06, 0x00];
        let mut out = Vec::new();
        walk(&t, t.root, &mut Cursor::new(&input), &mut out, 0).unwrap();
        assert_eq!(out, vec![0x06, 0x02, 0x02, 0x06, 0x00]);
    }

    #[test]
    fn errors_name_the_field_path() {
        let t = tree(json!({"type": "record", "name": "R", "fields": [
            {"name": "a", "type": {"type": "record", "name": "A", "fields": [
                {"name": "tags", "type": {"type": "array", "items": "string"}}]}}]}));
        // One-item array whose string claims 5 bytes but has 1.
        let input = [0x02, 0x0a, b'x'];
        let e = validate(&t, &input).unwrap_err();
        assert_eq!(e.kind, DecodeErrorKind::Truncated);
        assert_eq!(e.path, "a.tags[0]");
    }

    #[test]
    fn hostile_counts_do_not_loop_or_allocate() {
        let t = tree(json!({"type": "array", "items": "null"}));
        let mut input = Vec::new();
        write_long(&mut input, i64::MAX / 2);
        assert!(matches!(
            validate(&t, &input).unwrap_err().kind,
            DecodeErrorKind::BadLength
        ));
        let t = tree(json!({"type": "array", "items": "long"}));
        assert!(validate(&t, &input).is_err());
    }

    #[test]
    fn zero_size_items_are_capped_across_blocks() {
        let t = tree(json!({"type": "array", "items": "null"}));
        let mut input = Vec::new();
        for _ in 0..3 {
            write_long(&mut input, MAX_ZERO_SIZE_ITEMS / 2);
        }
        write_long(&mut input, 0);
        assert_eq!(
            validate(&t, &input).unwrap_err().kind,
            DecodeErrorKind::TooManyItems
        );
    }

    #[test]
    fn trailing_bytes_are_rejected() {
        let t = tree(json!("long"));
        let e = validate(&t, &[0x02, 0x00]).unwrap_err();
        assert_eq!(e.kind, DecodeErrorKind::TrailingBytes(1));
    }
}
