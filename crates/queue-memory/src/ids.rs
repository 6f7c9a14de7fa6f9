//! Receipt tokens as 16 characters carrying 96 bits (a 32-bit slot and a 64-bit lock
//! token), six bits per character. The alphabet is the 64 consecutive ASCII characters
//! `'0'..='o'` (digits, `:;<=>?@`, capitals, `` [\]^_` ``, `a` to `o`), so eight characters
//! are written or read (and checked) at once in a `u64`, without a table, `fmt` or a
//! loop over characters: tokens are minted on every receive and read on every settle.

/// Length of an encoded token.
pub(crate) const TOKEN_LEN: usize = 16;

const LOW48: u64 = (1 << 48) - 1;
/// `b` in every byte of a `u64`.
const fn lanes(b: u8) -> u64 {
    0x0101_0101_0101_0101 * b as u64
}
/// The first character of the alphabet (value 0); value `v` is `FIRST + v`.
const FIRST: u8 = b'0';
const HIGH: u64 = lanes(0x80);
const SIX: u64 = 0x003f_003f_003f_003f;
const TWELVE: u64 = 0x0000_0fff_0000_0fff;

/// The low 48 bits of `bits` as 8 characters, most significant first.
fn write48(bits: u64) -> [u8; 8] {
    let bits = bits & LOW48;
    // 24 bits in each 32-bit lane, then 12 in each 16-bit lane, then 6 in each byte.
    let x = ((bits >> 24) << 32) | (bits & 0xff_ffff);
    let x = (((x >> 12) & TWELVE) << 16) | (x & TWELVE);
    let x = (((x >> 6) & SIX) << 8) | (x & SIX);
    (x + lanes(FIRST)).to_be_bytes()
}

/// Reads 8 characters back into 48 bits; `None` unless every one is in the alphabet.
fn read48(text: [u8; 8]) -> Option<u64> {
    let w = u64::from_be_bytes(text);
    // For ASCII bytes no addition below carries into the next byte.
    let ascii = w & HIGH == 0;
    let none_below = w.wrapping_add(lanes(0x80 - FIRST)) & HIGH == HIGH;
    let none_above = w.wrapping_add(lanes(0x80 - (FIRST + 64))) & HIGH == 0;
    if !(ascii && none_below && none_above) {
        return None;
    }
    let v = w - lanes(FIRST);
    let v = (((v >> 8) & SIX) << 6) | (v & SIX);
    let v = (((v >> 16) & TWELVE) << 12) | (v & TWELVE);
    Some(((v >> 32) << 24) | (v & 0xff_ffff))
}

/// Encodes `slot` and `lock` (96 bits) as 16 characters.
pub(crate) fn encode(slot: u32, lock: u64) -> [u8; TOKEN_LEN] {
    let mut out = [0u8; TOKEN_LEN];
    out[..8].copy_from_slice(&write48((u64::from(slot) << 16) | (lock >> 48)));
    out[8..].copy_from_slice(&write48(lock & LOW48));
    out
}

/// Decodes what [`encode`] wrote; `None` for any other text.
pub(crate) fn decode(text: &[u8]) -> Option<(u32, u64)> {
    let text: &[u8; TOKEN_LEN] = text.try_into().ok()?;
    let (hi, lo) = text.split_at(8);
    let hi = read48(hi.try_into().ok()?)?;
    let lo = read48(lo.try_into().ok()?)?;
    let slot = u32::try_from(hi >> 16).ok()?;
    Some((slot, ((hi & 0xffff) << 48) | lo))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn in_alphabet(c: u8) -> bool {
        (FIRST..FIRST + 64).contains(&c)
    }

    #[test]
    fn tokens_round_trip_and_reject_other_spellings() {
        for (slot, lock) in [
            (0, 0),
            (7, 1),
            (u32::MAX, u64::MAX),
            (1 << 31, 0xabcd << 40),
            (0x1234_5678, 0x0123_4567_89ab_cdef),
        ] {
            let text = encode(slot, lock);
            assert_eq!(decode(&text), Some((slot, lock)));
            assert!(text.iter().all(|c| in_alphabet(*c)), "{text:?}");
        }
        assert_eq!(decode(b""), None);
        assert_eq!(decode(b"000000000000000"), None, "too short");
        assert_eq!(decode(b"00000000000000000"), None, "too long");
        assert_eq!(decode(b"0000000000000000"), Some((0, 0)));
        assert_eq!(decode(b"oooooooooooooooo"), Some((u32::MAX, u64::MAX)));
    }

    #[test]
    fn every_character_outside_the_alphabet_is_refused_in_every_position() {
        let valid = encode(0x0102_0304, 0x0506_0708_090a_0b0c);
        for pos in 0..TOKEN_LEN {
            for c in 0..=255u8 {
                let mut text = valid;
                text[pos] = c;
                assert_eq!(
                    decode(&text).is_some(),
                    in_alphabet(c),
                    "byte {c:#x} at {pos}"
                );
            }
        }
    }

    #[test]
    fn each_character_carries_six_bits_in_order() {
        for bit in 0..96u32 {
            let (slot, lock) = if bit < 64 {
                (0, 1u64 << bit)
            } else {
                (1u32 << (bit - 64), 0)
            };
            let text = encode(slot, lock);
            // Bit `bit` of the 96 (counted from the least significant) is in character
            // 15 - bit / 6, with value 1 << (bit % 6).
            let pos = 15 - (bit / 6) as usize;
            for (i, c) in text.iter().enumerate() {
                let want = if i == pos {
                    FIRST + (1 << (bit % 6))
                } else {
                    FIRST
                };
                assert_eq!(*c, want, "bit {bit} char {i}");
            }
            assert_eq!(decode(&text), Some((slot, lock)));
        }
    }
}
