//! Receipt tokens as fixed-width hexadecimal text: written with a table lookup per digit
//! and read back at fixed offsets, without `fmt` or searching for separators (they are
//! on every receive and settle).

const HEX: &[u8; 16] = b"0123456789abcdef";

/// Writes the low `out.len()` hexadecimal digits of `value` into `out`, most significant
/// first (`out` is at most 16 bytes long).
pub(crate) fn write_hex(out: &mut [u8], value: u64) {
    let width = out.len();
    for (i, digit) in out.iter_mut().enumerate() {
        let shift = 4 * (width - 1 - i);
        *digit = HEX[((value >> shift) & 0xf) as usize];
    }
}

/// The value of each byte as a lowercase hexadecimal digit, or `0xff`.
const DIGIT: [u8; 256] = {
    let mut t = [0xff; 256];
    let mut i = 0;
    while i < 16 {
        t[HEX[i] as usize] = i as u8;
        i += 1;
    }
    t
};

/// Reads 1 to 16 lowercase hexadecimal digits.
pub(crate) fn parse_hex(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() || digits.len() > 16 {
        return None;
    }
    let mut value = 0u64;
    let mut bad = 0u8;
    for d in digits {
        let v = DIGIT[usize::from(*d)];
        bad |= v;
        value = (value << 4) | u64::from(v & 0xf);
    }
    // Any invalid digit set the high bits of `bad`.
    (bad & 0xf0 == 0).then_some(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trips_at_fixed_width() {
        for v in [0u64, 7, 0xabc, u64::from(u32::MAX), u64::MAX] {
            let mut buf = [0u8; 16];
            write_hex(&mut buf, v);
            assert_eq!(&buf, format!("{v:016x}").as_bytes());
            assert_eq!(parse_hex(&buf), Some(v));
        }
        let mut short = [0u8; 8];
        write_hex(&mut short, 0x1234_5678);
        assert_eq!(&short, b"12345678");
        assert_eq!(parse_hex(b""), None);
        assert_eq!(parse_hex(b"12G4"), None);
        assert_eq!(parse_hex(b"ABCD"), None, "uppercase is not what we write");
        assert_eq!(parse_hex(&[b'1'; 17]), None);
    }
}
