//! Bounded decoding of peer bytes.
//!
//! The generic AMQP decoder trusts the sizes and counts an encoding announces, so 21 bytes
//! announcing a 4 GiB string make it try to allocate 4 GiB. Every byte a peer sends is
//! therefore walked first by [`check_values`]: each announced size must fit in the bytes
//! that are actually there, each element count must fit in its size, and nesting is
//! capped. Only then is it handed to the decoder, so no decode allocates more than the
//! bytes received (themselves capped by the negotiated max frame size and, for messages,
//! the tier's max message size).

use serde::de::DeserializeOwned;

/// How deep compound values (lists, maps, arrays, described values) may nest.
pub const MAX_DEPTH: usize = 32;

/// Why peer bytes were refused before decoding.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// The bytes end inside a value.
    #[error("truncated value at byte {at}")]
    Truncated {
        /// Offset of the value.
        at: usize,
    },
    /// A size or count larger than the bytes that follow.
    #[error("value at byte {at} announces {announced} bytes or elements but {available} follow")]
    SizeTooLarge {
        /// Offset of the value.
        at: usize,
        /// What it announced.
        announced: u64,
        /// What is there.
        available: usize,
    },
    /// A map whose element count is odd (keys and values come in pairs).
    #[error("map at byte {at} has an odd element count")]
    OddMap {
        /// Offset of the map.
        at: usize,
    },
    /// Compound values nested deeper than [`MAX_DEPTH`].
    #[error("values nested deeper than {MAX_DEPTH}")]
    TooDeep,
    /// A constructor byte that is not an AMQP type.
    #[error("unknown type constructor 0x{code:02x} at byte {at}")]
    BadConstructor {
        /// The byte.
        code: u8,
        /// Its offset.
        at: usize,
    },
    /// The checked bytes still did not decode as the expected type.
    #[error("malformed encoding: {0}")]
    Malformed(String),
}

/// Width in bytes of the data of a fixed-width type, or `None` for variable and
/// compound types.
fn fixed_width(code: u8) -> Option<usize> {
    Some(match code {
        0x40..=0x45 => 0,
        0x50..=0x56 => 1,
        0x60 | 0x61 => 2,
        0x70..=0x73 => 4,
        0x80..=0x84 | 0x94 => 8,
        0x98 => 16,
        _ => return None,
    })
}

struct Walker<'a> {
    b: &'a [u8],
    pos: usize,
}

impl Walker<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8], DecodeError> {
        let at = self.pos;
        let end = at.checked_add(n).filter(|e| *e <= self.b.len());
        let end = end.ok_or(DecodeError::Truncated { at })?;
        self.pos = end;
        Ok(&self.b[at..end])
    }

    fn byte(&mut self) -> Result<u8, DecodeError> {
        Ok(self.take(1)?[0])
    }

    fn len(&mut self, wide: bool) -> Result<u64, DecodeError> {
        Ok(if wide {
            let s = self.take(4)?;
            u64::from(u32::from_be_bytes([s[0], s[1], s[2], s[3]]))
        } else {
            u64::from(self.byte()?)
        })
    }

    /// A size that must fit in what follows; returns the end offset.
    fn sized(&mut self, wide: bool, at: usize) -> Result<usize, DecodeError> {
        let size = self.len(wide)?;
        let available = self.b.len() - self.pos;
        if size > available as u64 {
            return Err(DecodeError::SizeTooLarge {
                at,
                announced: size,
                available,
            });
        }
        Ok(self.pos + size as usize)
    }

    /// One value with its constructor.
    fn value(&mut self, depth: usize) -> Result<(), DecodeError> {
        let at = self.pos;
        let code = self.byte()?;
        if code == 0x00 {
            if depth >= MAX_DEPTH {
                return Err(DecodeError::TooDeep);
            }
            self.value(depth + 1)?; // descriptor
            return self.value(depth + 1);
        }
        self.data(code, at, depth)
    }

    /// The data of a value whose constructor is `code`.
    fn data(&mut self, code: u8, at: usize, depth: usize) -> Result<(), DecodeError> {
        if let Some(w) = fixed_width(code) {
            self.take(w)?;
            return Ok(());
        }
        let wide = code & 0xf0 != 0xa0 && code & 0xf0 != 0xc0 && code & 0xf0 != 0xe0;
        match code {
            0xa0 | 0xa1 | 0xa3 | 0xb0 | 0xb1 | 0xb3 => {
                let end = self.sized(wide, at)?;
                self.pos = end;
                Ok(())
            }
            0xc0 | 0xc1 | 0xd0 | 0xd1 => self.compound(code, at, depth),
            0xe0 | 0xf0 => self.array(wide, at, depth),
            _ => Err(DecodeError::BadConstructor { code, at }),
        }
    }

    fn counted(
        &mut self,
        wide: bool,
        at: usize,
        depth: usize,
    ) -> Result<(usize, u64), DecodeError> {
        if depth >= MAX_DEPTH {
            return Err(DecodeError::TooDeep);
        }
        let end = self.sized(wide, at)?;
        let count = self.len(wide)?;
        let room = end.saturating_sub(self.pos);
        if self.pos > end || count > room as u64 {
            return Err(DecodeError::SizeTooLarge {
                at,
                announced: count,
                available: room,
            });
        }
        Ok((end, count))
    }

    fn compound(&mut self, code: u8, at: usize, depth: usize) -> Result<(), DecodeError> {
        let wide = code >= 0xd0;
        let (end, count) = self.counted(wide, at, depth)?;
        if code & 0x0f == 1 && count % 2 == 1 {
            return Err(DecodeError::OddMap { at });
        }
        let mut inner = Walker {
            b: &self.b[..end],
            pos: self.pos,
        };
        for _ in 0..count {
            inner.value(depth + 1)?;
        }
        self.pos = end;
        Ok(())
    }

    fn array(&mut self, wide: bool, at: usize, depth: usize) -> Result<(), DecodeError> {
        let (end, count) = self.counted(wide, at, depth)?;
        let mut inner = Walker {
            b: &self.b[..end],
            pos: self.pos,
        };
        let el_at = inner.pos;
        let mut code = inner.byte()?;
        if code == 0x00 {
            inner.value(depth + 1)?; // the elements' descriptor
            code = inner.byte()?;
        }
        for _ in 0..count {
            inner.data(code, el_at, depth + 1)?;
        }
        self.pos = end;
        Ok(())
    }
}

/// Walks a sequence of AMQP values filling `bytes` exactly, checking every announced size
/// and count against the bytes present and nesting against [`MAX_DEPTH`]. Allocates nothing.
pub fn check_values(bytes: &[u8]) -> Result<(), DecodeError> {
    let mut w = Walker { b: bytes, pos: 0 };
    while w.pos < bytes.len() {
        w.value(0)?;
    }
    Ok(())
}

/// Checks the first value of `bytes` and returns how many bytes it takes.
pub fn check_first_value(bytes: &[u8]) -> Result<usize, DecodeError> {
    let mut w = Walker { b: bytes, pos: 0 };
    w.value(0)?;
    Ok(w.pos)
}

/// Decodes `bytes` as `T` after [`check_values`].
pub(crate) fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, DecodeError> {
    check_values(bytes)?;
    serde_amqp::from_slice(bytes).map_err(|e| DecodeError::Malformed(e.to_string()))
}

/// What a frame body (after the frame header) holds, for the fuzz target and tests:
/// decodes the performative, then, for a transfer, the payload as a message or batch.
/// Never panics and never allocates beyond a small multiple of `body.len()`.
pub fn decode_frame_body(body: &[u8]) -> Result<(), DecodeError> {
    use fe2o3_amqp_types::performatives::Performative;
    if body.is_empty() {
        return Ok(());
    }
    let n = check_first_value(body)?;
    let p: Performative =
        serde_amqp::from_slice(&body[..n]).map_err(|e| DecodeError::Malformed(e.to_string()))?;
    if let Performative::Transfer(t) = p {
        let format = t.message_format.unwrap_or(0);
        crate::server::decode_incoming(format, &body[n..]).map_err(DecodeError::Malformed)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn announced_sizes_must_be_present() {
        // str32 announcing 4 GiB with 4 bytes behind it.
        let huge = [0xb1, 0xff, 0xff, 0xff, 0xff, b'a', b'b', b'c', b'd'];
        assert!(matches!(
            check_values(&huge),
            Err(DecodeError::SizeTooLarge { .. })
        ));
        // list32 whose count exceeds its size.
        let list = [0xd0, 0, 0, 0, 4, 0xff, 0xff, 0xff, 0xff];
        assert!(check_values(&list).is_err());
        // array32 of nulls announcing 2^32-1 elements in 1 byte.
        let arr = [0xf0, 0, 0, 0, 5, 0xff, 0xff, 0xff, 0xff, 0x40];
        assert!(check_values(&arr).is_err());
        assert!(matches!(
            check_values(&[0xa1, 3, b'a']),
            Err(DecodeError::SizeTooLarge { .. })
        ));
        assert!(matches!(
            check_values(&[0x71, 0, 0]),
            Err(DecodeError::Truncated { .. })
        ));
        assert!(check_values(&[0xff]).is_err());
    }

    #[test]
    fn maps_hold_pairs() {
        // Found by the fuzz target: an odd map count made the decoder underflow.
        let odd = [0x00, 0x53, 0x14, 0xc0, 0x05, 0x01, 0xc1, 0x02, 0x01, 0x40];
        assert!(check_values(&odd).is_err());
        let crash = [
            0x00, 0x53, 0x14, 0xc0, 0x04, 0x01, 0x43, 0x00, 0xa3, 0x00, 0x53, 0x77, 0x00, 0x53,
            0x14, 0xc1, 0x04, 0x01, 0xa1, 0x00, 0xa3, 0x00, 0x53, 0xa3, 0x00, 0x53, 0x77, 0x41,
        ];
        let _ = decode_frame_body(&crash);
        assert!(check_values(&[0xc1, 0x03, 0x02, 0x40, 0x40]).is_ok());
    }

    #[test]
    fn nesting_is_capped() {
        let mut deep = Vec::new();
        for _ in 0..100 {
            deep.extend_from_slice(&[0x00, 0x53, 0x10]);
        }
        deep.push(0x40);
        assert_eq!(check_values(&deep), Err(DecodeError::TooDeep));
    }

    #[test]
    fn real_encodings_pass() {
        use fe2o3_amqp_types::performatives::{Open, Performative};
        let open = Performative::Open(Open {
            container_id: "c".into(),
            hostname: Some("h".into()),
            max_frame_size: 65536.into(),
            channel_max: 10.into(),
            idle_time_out: Some(1000),
            outgoing_locales: None,
            incoming_locales: None,
            offered_capabilities: None,
            desired_capabilities: Some(vec!["x".into(), "y".into()].into()),
            properties: None,
        });
        let bytes = serde_amqp::to_vec(&open).unwrap();
        check_values(&bytes).unwrap();
        assert_eq!(check_first_value(&bytes).unwrap(), bytes.len());
        decode_frame_body(&bytes).unwrap();
        let _: Performative = decode(&bytes).unwrap();
    }
}
