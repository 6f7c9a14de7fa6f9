//! Receipt tokens as 16 characters of URL-safe base64 carrying 96 bits (a 32-bit slot and
//! a 64-bit lock token): written and read with one table lookup per character, without
//! `fmt`, searching for separators or validating digits one at a time (they are on every
//! receive and settle).

const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

/// The value of each byte as a character of [`ALPHABET`], or `0xff`.
const VALUE: [u8; 256] = {
    let mut t = [0xff; 256];
    let mut i = 0;
    while i < 64 {
        t[ALPHABET[i] as usize] = i as u8;
        i += 1;
    }
    t
};

/// Length of an encoded token.
pub(crate) const TOKEN_LEN: usize = 16;

const LOW48: u64 = (1 << 48) - 1;

/// Writes the low 48 bits of `bits` as 8 characters, most significant first.
fn write48(out: &mut [u8], bits: u64) {
    for (i, c) in out.iter_mut().enumerate() {
        *c = ALPHABET[((bits >> (42 - 6 * i)) & 63) as usize];
    }
}

/// Reads 8 characters back into 48 bits.
fn read48(text: &[u8]) -> Option<u64> {
    let mut bits = 0u64;
    let mut bad = 0u8;
    for c in text {
        let v = VALUE[usize::from(*c)];
        bad |= v;
        bits = (bits << 6) | u64::from(v & 63);
    }
    // An invalid character set the high bits of `bad`.
    (bad & 0xc0 == 0).then_some(bits)
}

/// Encodes `slot` and `lock` (96 bits) as 16 characters.
pub(crate) fn encode(slot: u32, lock: u64) -> [u8; TOKEN_LEN] {
    let mut out = [0u8; TOKEN_LEN];
    write48(&mut out[..8], (u64::from(slot) << 16) | (lock >> 48));
    write48(&mut out[8..], lock & LOW48);
    out
}

/// Decodes what [`encode`] wrote; `None` for any other text.
pub(crate) fn decode(text: &[u8]) -> Option<(u32, u64)> {
    if text.len() != TOKEN_LEN {
        return None;
    }
    let hi = read48(&text[..8])?;
    let lo = read48(&text[8..])?;
    let slot = u32::try_from(hi >> 16).ok()?;
    Some((slot, ((hi & 0xffff) << 48) | lo))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip_and_reject_other_spellings() {
        for (slot, lock) in [
            (0, 0),
            (7, 1),
            (u32::MAX, u64::MAX),
            (1 << 31, 0xabcd << 40),
        ] {
            let text = encode(slot, lock);
            assert_eq!(decode(&text), Some((slot, lock)));
            assert!(text.iter().all(|c| ALPHABET.contains(c)));
        }
        assert_eq!(decode(b""), None);
        assert_eq!(decode(b"AAAAAAAAAAAAAAA"), None, "too short");
        assert_eq!(decode(b"AAAAAAAAAAAAAAAAA"), None, "too long");
        assert_eq!(decode(b"AAAAAAAA=AAAAAAA"), None, "not in the alphabet");
        assert_eq!(decode(b"AAAAAAA.AAAAAAAA"), None);
    }
}
