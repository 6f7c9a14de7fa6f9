//! The v1 canonical encoding (specified in `docs/security.md`), and the stack buffer its
//! header is written into before it reaches the HMAC.
//!
//! The encoding is a header (domain tag, key id, times, queue, ids, content type,
//! subject, covered attributes, body length) followed by the body. The MAC is computed
//! with two updates: the header, gathered in a [`Header`] (on the stack unless it is
//! longer than [`HEADER_BUF`] bytes), then the body as it is.

use subtle::ConstantTimeEq as _;

use crate::signature::{SignedFields, V1_DOMAIN};

/// Header bytes kept on the stack; a typical GitHub event needs about 200.
pub(crate) const HEADER_BUF: usize = 512;

/// Where encoded pieces go.
pub(crate) trait Sink {
    fn put(&mut self, bytes: &[u8]);
}

/// A closure as a [`Sink`].
pub(crate) struct FnSink<F>(pub(crate) F);

impl<F: FnMut(&[u8])> Sink for FnSink<F> {
    fn put(&mut self, bytes: &[u8]) {
        (self.0)(bytes);
    }
}

/// `bytes(x)`: a 4-byte big-endian length, then `x`.
#[inline]
fn bytes(out: &mut impl Sink, value: &[u8]) {
    // Inputs are bounded far below 4 GiB by the parser and the limits.
    let len = u32::try_from(value.len()).unwrap_or(u32::MAX);
    out.put(&len.to_be_bytes());
    out.put(value);
}

/// `opt(x)`: `0x00` when absent, else `0x01` then `bytes(x)`.
#[inline]
fn opt(out: &mut impl Sink, value: Option<&str>) {
    match value {
        None => out.put(&[0]),
        Some(v) => {
            out.put(&[1]);
            bytes(out, v.as_bytes());
        }
    }
}

/// The header up to and including the attribute count (`fields.attributes` is not
/// read: the pairs follow through [`encode_attribute`]).
#[inline]
pub(crate) fn encode_head(out: &mut impl Sink, fields: &SignedFields<'_>, attributes: usize) {
    bytes(out, V1_DOMAIN);
    bytes(out, fields.key_id.as_bytes());
    out.put(&fields.signed_at_ms.to_be_bytes());
    match fields.not_before_ms {
        None => out.put(&[0]),
        Some(n) => {
            out.put(&[1]);
            out.put(&n.to_be_bytes());
        }
    }
    bytes(out, fields.queue.as_bytes());
    bytes(out, fields.message_id.as_bytes());
    opt(out, fields.session_id);
    opt(out, fields.correlation_id);
    opt(out, fields.content_type);
    opt(out, fields.subject);
    let count = u32::try_from(attributes).unwrap_or(u32::MAX);
    out.put(&count.to_be_bytes());
}

/// One covered attribute: `bytes(name) bytes(value)`.
#[inline]
pub(crate) fn encode_attribute(out: &mut impl Sink, name: &str, value: &str) {
    bytes(out, name.as_bytes());
    bytes(out, value.as_bytes());
}

/// The body's length: 8 bytes big-endian (the body itself follows).
#[inline]
pub(crate) fn encode_body_len(out: &mut impl Sink, len: usize) {
    out.put(&(len as u64).to_be_bytes());
}

/// Bytes gathered on the stack, or on the heap once they outgrow `N`: the header of the
/// canonical encoding before it reaches the HMAC ([`Header`]), the envelope text before it
/// becomes the attribute value.
pub(crate) struct StackBuf<const N: usize> {
    buf: [u8; N],
    len: usize,
    /// Everything written, once it no longer fits `buf` (then `len` is unused).
    spill: Option<Vec<u8>>,
}

/// The header of the canonical encoding.
pub(crate) type Header = StackBuf<HEADER_BUF>;

impl<const N: usize> StackBuf<N> {
    pub(crate) fn new() -> Self {
        Self {
            buf: [0; N],
            len: 0,
            spill: None,
        }
    }

    /// The bytes written so far.
    pub(crate) fn as_slice(&self) -> &[u8] {
        match &self.spill {
            None => &self.buf[..self.len],
            Some(spill) => spill,
        }
    }

    /// How many bytes are written.
    pub(crate) fn len(&self) -> usize {
        self.as_slice().len()
    }

    /// Overwrites the 4 bytes at `at` (written before) with `value`, big-endian.
    pub(crate) fn patch_u32(&mut self, at: usize, value: u32) {
        let target = match &mut self.spill {
            None => &mut self.buf[..self.len],
            Some(spill) => spill.as_mut_slice(),
        };
        target[at..at + 4].copy_from_slice(&value.to_be_bytes());
    }

    #[cold]
    #[inline(never)]
    fn put_spilled(&mut self, bytes: &[u8]) {
        let spill = self.spill.get_or_insert_with(|| {
            let mut spill = Vec::with_capacity(2 * N + bytes.len());
            spill.extend_from_slice(&self.buf[..self.len]);
            spill
        });
        spill.extend_from_slice(bytes);
    }
}

impl<const N: usize> Sink for StackBuf<N> {
    #[inline]
    fn put(&mut self, bytes: &[u8]) {
        let end = self.len + bytes.len();
        if self.spill.is_none() && end <= N {
            copy_short(&mut self.buf[self.len..end], bytes);
            self.len = end;
        } else {
            self.put_spilled(bytes);
        }
    }
}

/// `dst.copy_from_slice(src)` for slices of equal length, without a call to `memcpy`
/// for the short pieces a header is made of: up to 32 bytes are moved as two
/// overlapping fixed-size copies (inlined as a few loads and stores).
#[inline(always)]
fn copy_short(dst: &mut [u8], src: &[u8]) {
    let n = src.len();
    if n > 32 || dst.len() != n {
        dst.copy_from_slice(src);
    } else if n >= 16 {
        dst[..16].copy_from_slice(&src[..16]);
        dst[n - 16..].copy_from_slice(&src[n - 16..]);
    } else if n >= 8 {
        dst[..8].copy_from_slice(&src[..8]);
        dst[n - 8..].copy_from_slice(&src[n - 8..]);
    } else if n >= 4 {
        dst[..4].copy_from_slice(&src[..4]);
        dst[n - 4..].copy_from_slice(&src[n - 4..]);
    } else {
        for (d, s) in dst.iter_mut().zip(src) {
            *d = *s;
        }
    }
}

/// HMAC-SHA256 of `header` then `body` with a precomputed key schedule.
pub(crate) fn mac(key: &ring::hmac::Key, header: &[u8], body: &[u8]) -> [u8; 32] {
    let mut ctx = ring::hmac::Context::with_key(key);
    ctx.update(header);
    ctx.update(body);
    let tag = ctx.sign();
    let mut mac = [0u8; 32];
    mac.copy_from_slice(tag.as_ref());
    mac
}

/// Compares two MACs in constant time: the differences are OR-ed together over all 32
/// bytes (no early exit), and only the result goes through `subtle`'s comparison.
pub(crate) fn macs_equal(a: &[u8; 32], b: &[u8; 32]) -> bool {
    // Eight bytes at a time, as the MACs were written.
    let word = |m: &[u8], i: usize| u64::from_ne_bytes(m[i..i + 8].try_into().unwrap_or_default());
    let diff = (0..32)
        .step_by(8)
        .fold(0u64, |acc, i| acc | (word(a, i) ^ word(b, i)));
    bool::from(diff.ct_eq(&0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_header_spills_to_the_heap_and_keeps_every_byte() {
        let mut header = Header::new();
        let mut expected = Vec::new();
        for i in 0..200u8 {
            let piece = vec![i; usize::from(i % 7)];
            header.put(&piece);
            expected.extend_from_slice(&piece);
        }
        assert!(expected.len() > HEADER_BUF);
        assert_eq!(header.as_slice(), expected.as_slice());
        header.patch_u32(HEADER_BUF - 2, 0x0102_0304);
        expected[HEADER_BUF - 2..HEADER_BUF + 2].copy_from_slice(&[1, 2, 3, 4]);
        assert_eq!(header.as_slice(), expected.as_slice());
        assert_eq!(header.len(), expected.len());
    }

    #[test]
    fn short_copies_copy_every_length() {
        let src: Vec<u8> = (0..40).collect();
        for n in 0..=40 {
            let mut dst = vec![0xee; n];
            copy_short(&mut dst, &src[..n]);
            assert_eq!(dst, &src[..n]);
        }
    }

    #[test]
    fn macs_equal_finds_any_difference() {
        let a = [0x5a; 32];
        assert!(macs_equal(&a, &a));
        for i in 0..32 {
            for bit in 0..8 {
                let mut b = a;
                b[i] ^= 1 << bit;
                assert!(!macs_equal(&a, &b));
            }
        }
    }
}
