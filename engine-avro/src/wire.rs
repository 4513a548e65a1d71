//! Low-level Avro binary primitives: zig-zag varints, floats and
//! length-prefixed byte strings, with bounds-checked reads that never panic.

use super::error::{AvroError, DResult as Result};

/// Appends a zig-zag varint `long`.
#[inline(always)]
pub(crate) fn write_long(out: &mut Vec<u8>, v: i64) {
    let mut n = ((v << 1) ^ (v >> 63)) as u64;
    if n < 0x80 {
        out.push(n as u8);
        return;
    }
    // A 64-bit zig-zag value needs at most 10 varint bytes.
    let mut buf = [0u8; 10];
    let mut i = 0;
    while n >= 0x80 {
        buf[i] = (n as u8) | 0x80;
        n >>= 7;
        i += 1;
    }
    buf[i] = n as u8;
    out.extend_from_slice(&buf[..=i]);
}

/// Appends a length-prefixed byte string (Avro `bytes` / `string`).
#[inline(always)]
pub(crate) fn write_bytes(out: &mut Vec<u8>, b: &[u8]) {
    write_long(out, b.len() as i64);
    out.extend_from_slice(b);
}

#[cold]
fn eof(what: &str, need: usize, have: usize) -> super::error::BoxedError {
    AvroError::decode(format!(
        "unexpected end of input reading {what}: need {need} byte(s), {have} remain"
    ))
    .into()
}

/// Reads a zig-zag varint `long`, advancing `input`.
#[inline(always)]
pub(crate) fn read_long(input: &mut &[u8]) -> Result<i64> {
    match input.first() {
        Some(&b) if b < 0x80 => {
            *input = &input[1..];
            Ok(((b >> 1) as i64) ^ -((b & 1) as i64))
        }
        _ => read_long_slow(input),
    }
}

#[inline(never)]
fn read_long_slow(input: &mut &[u8]) -> Result<i64> {
    let mut n: u64 = 0;
    let mut shift = 0u32;
    let mut i = 0usize;
    loop {
        let Some(&b) = input.get(i) else {
            return Err(eof("a varint", i + 1, input.len()));
        };
        i += 1;
        if shift == 63 && b > 1 {
            return Err(AvroError::decode("varint overflows 64 bits").into());
        }
        n |= ((b & 0x7f) as u64) << shift;
        if b < 0x80 {
            break;
        }
        shift += 7;
        if shift > 63 {
            return Err(AvroError::decode("varint longer than 10 bytes").into());
        }
    }
    *input = &input[i..];
    Ok(((n >> 1) as i64) ^ -((n & 1) as i64))
}

/// Reads a zig-zag varint that must fit an Avro `int`.
#[inline(always)]
pub(crate) fn read_int(input: &mut &[u8]) -> Result<i32> {
    let v = read_long(input)?;
    i32::try_from(v)
        .map_err(|_| AvroError::decode(format!("int value {v} out of 32-bit range")).into())
}

/// Reads a block/length count and checks it is not negative.
#[inline(always)]
pub(crate) fn read_len(input: &mut &[u8], what: &str) -> Result<usize> {
    let v = read_long(input)?;
    if v < 0 {
        return Err(AvroError::decode(format!("negative {what} length {v}")).into());
    }
    let n = v as usize;
    if n > input.len() {
        return Err(eof(what, n, input.len()));
    }
    Ok(n)
}

/// Reads `n` raw bytes.
#[inline(always)]
pub(crate) fn read_fixed<'a>(input: &mut &'a [u8], n: usize, what: &str) -> Result<&'a [u8]> {
    if input.len() < n {
        return Err(eof(what, n, input.len()));
    }
    let (head, tail) = input.split_at(n);
    *input = tail;
    Ok(head)
}

/// Reads length-prefixed bytes.
#[inline(always)]
pub(crate) fn read_bytes<'a>(input: &mut &'a [u8]) -> Result<&'a [u8]> {
    let n = read_len(input, "bytes")?;
    let (head, tail) = input.split_at(n);
    *input = tail;
    Ok(head)
}

/// Reads a length-prefixed UTF-8 string.
#[inline(always)]
pub(crate) fn read_str<'a>(input: &mut &'a [u8]) -> Result<&'a str> {
    let n = read_len(input, "string")?;
    let (head, tail) = input.split_at(n);
    *input = tail;
    if head.is_ascii() {
        // SAFETY: every ASCII byte sequence is valid UTF-8. `is_ascii` is a
        // word-at-a-time scan, much cheaper than full validation for the
        // short, mostly-ASCII strings (ids, names) that dominate records.
        #[allow(unsafe_code)]
        return Ok(unsafe { std::str::from_utf8_unchecked(head) });
    }
    std::str::from_utf8(head)
        .map_err(|e| AvroError::decode(format!("string is not valid UTF-8: {e}")).into())
}

/// Reads a boolean byte, rejecting anything but 0 and 1.
#[inline(always)]
pub(crate) fn read_bool(input: &mut &[u8]) -> Result<bool> {
    match read_fixed(input, 1, "boolean")?[0] {
        0 => Ok(false),
        1 => Ok(true),
        b => Err(AvroError::decode(format!("boolean byte must be 0 or 1, got {b}")).into()),
    }
}

#[inline(always)]
pub(crate) fn read_f32(input: &mut &[u8]) -> Result<f32> {
    let b = read_fixed(input, 4, "float")?;
    let mut a = [0u8; 4];
    a.copy_from_slice(b);
    Ok(f32::from_le_bytes(a))
}

#[inline(always)]
pub(crate) fn read_f64(input: &mut &[u8]) -> Result<f64> {
    let b = read_fixed(input, 8, "double")?;
    let mut a = [0u8; 8];
    a.copy_from_slice(b);
    Ok(f64::from_le_bytes(a))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varint_roundtrip_edges() {
        for v in [
            0i64,
            -1,
            1,
            63,
            -64,
            64,
            -65,
            i32::MAX as i64,
            i32::MIN as i64,
            i64::MAX,
            i64::MIN,
        ] {
            let mut out = Vec::new();
            write_long(&mut out, v);
            let mut s = out.as_slice();
            assert_eq!(read_long(&mut s).unwrap(), v);
            assert!(s.is_empty());
        }
    }

    #[test]
    fn varint_rejects_garbage() {
        let mut s: &[u8] = &[0xff; 11];
        assert!(read_long(&mut s).is_err());
        let mut s: &[u8] = &[0x80];
        assert!(read_long(&mut s).is_err());
        let mut s: &[u8] = &[0xff, 0xff, 0xff, 0xff, 0x7f];
        assert!(read_long(&mut s).is_ok());
        let mut s: &[u8] = &[0xff, 0xff, 0xff, 0xff, 0x7f];
        assert!(read_int(&mut s).is_err());
    }
}
