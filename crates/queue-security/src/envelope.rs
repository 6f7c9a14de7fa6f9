//! The envelope's text form (`v=1;k=..;t=..[;n=..];a=..;s=..`): parsing and writing.
//!
//! Parsing is a single strict pass over the bytes ([`EnvelopeRef::parse_fast`]) that
//! accepts exactly what the step-by-step parser ([`EnvelopeRef::parse_checked`]) accepts;
//! only when the single pass refuses does the step-by-step parser run, to name the first
//! problem. The fuzz body [`crate::fuzzing::envelope`] checks that the two agree.

use crate::{
    canonical::Sink,
    error::SecurityError,
    keys::MAX_KEY_ID_LEN,
    limits::NAME_BYTE,
    signature::{MAX_COVERED_ATTRIBUTES, MAX_COVERED_NAME_LEN, MAX_ENVELOPE_LEN},
};

/// An envelope parsed in place: every field borrows the text (verification allocates
/// nothing for it).
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct EnvelopeRef<'a> {
    pub(crate) key_id: &'a str,
    pub(crate) signed_at_ms: u64,
    pub(crate) not_before_ms: Option<u64>,
    /// The covered names as written: comma-separated, validated, strictly ascending.
    pub(crate) covered: &'a str,
    pub(crate) covered_count: usize,
    pub(crate) mac: [u8; 32],
}

fn malformed(reason: &'static str) -> SecurityError {
    SecurityError::MalformedSignature { reason }
}

impl<'a> EnvelopeRef<'a> {
    /// Parses the text form strictly: one accepted spelling per envelope.
    pub(crate) fn parse(text: &'a str) -> Result<Self, SecurityError> {
        match Self::parse_fast(text) {
            Some(envelope) => Ok(envelope),
            None => Self::parse_checked(text),
        }
    }

    /// One pass over the bytes; `None` for anything [`parse_checked`](Self::parse_checked)
    /// refuses (and only for that).
    pub(crate) fn parse_fast(text: &'a str) -> Option<Self> {
        let b = text.as_bytes();
        if b.len() > MAX_ENVELOPE_LEN || !b.starts_with(b"v=1;k=") {
            return None;
        }
        let key_start = 6;
        let key_end = key_start + name_len(&b[key_start..]);
        if key_end == key_start || key_end - key_start > MAX_KEY_ID_LEN {
            return None;
        }
        let (signed_at_ms, mut at) = ms_field(b, key_end, b";t=")?;
        let mut not_before_ms = None;
        if b[at..].starts_with(b";n=") {
            let (n, next) = ms_field(b, at, b";n=")?;
            not_before_ms = Some(n);
            at = next;
        }
        if !b[at..].starts_with(b";a=") {
            return None;
        }
        let list_start = at + 3;
        let (covered_count, list_end) = covered_list(b, list_start)?;
        let hex = b[list_end..].strip_prefix(b";s=")?;
        let mac = decode_mac(hex)?;
        Some(Self {
            key_id: text.get(key_start..key_end)?,
            signed_at_ms,
            not_before_ms,
            covered: text.get(list_start..list_end)?,
            covered_count,
            mac,
        })
    }

    /// The reference parser: field by field, naming the first problem.
    pub(crate) fn parse_checked(text: &'a str) -> Result<Self, SecurityError> {
        if text.len() > MAX_ENVELOPE_LEN {
            return Err(malformed("envelope too long"));
        }
        let mut parts = text.split(';');
        check_version(field(parts.next(), "v=", "envelope must start with `v=`")?)?;
        let key_id = field(parts.next(), "k=", "missing `k=` after the version")?;
        if key_id.is_empty()
            || key_id.len() > MAX_KEY_ID_LEN
            || !key_id.bytes().all(|b| NAME_BYTE[usize::from(b)])
        {
            return Err(malformed("invalid key id"));
        }
        let signed_at_ms = parse_ms(field(parts.next(), "t=", "missing `t=` after the key id")?)?;
        let mut next = parts.next();
        let not_before_ms = match next.and_then(|p| p.strip_prefix("n=")) {
            Some(n) => {
                next = parts.next();
                Some(parse_ms(n)?)
            }
            None => None,
        };
        let covered = field(next, "a=", "missing `a=` after the timestamp")?;
        let covered_count = check_covered(covered)?;
        let sig = field(parts.next(), "s=", "missing `s=` after the attribute list")?;
        if parts.next().is_some() {
            return Err(malformed("unexpected field after `s=`"));
        }
        let mac = decode_mac(sig.as_bytes())
            .ok_or_else(|| malformed("signature must be 64 lowercase hex digits"))?;
        Ok(Self {
            key_id,
            signed_at_ms,
            not_before_ms,
            covered,
            covered_count,
            mac,
        })
    }

    /// The covered attribute names, in order.
    pub(crate) fn names(&self) -> Names<'a> {
        Names { rest: self.covered }
    }
}

/// The names of a validated covered list (no empty names, no empty list item).
pub(crate) struct Names<'a> {
    rest: &'a str,
}

impl<'a> Iterator for Names<'a> {
    type Item = &'a str;

    fn next(&mut self) -> Option<&'a str> {
        if self.rest.is_empty() {
            return None;
        }
        // Names are short: a byte loop beats a call to `memchr`.
        let end = self
            .rest
            .bytes()
            .position(|b| b == b',')
            .unwrap_or(self.rest.len());
        let name = &self.rest[..end];
        self.rest = self.rest.get(end + 1..).unwrap_or("");
        Some(name)
    }
}

/// How many bytes at the start of `b` are name bytes ([`NAME_BYTE`]).
fn name_len(b: &[u8]) -> usize {
    b.iter()
        .position(|&c| !NAME_BYTE[usize::from(c)])
        .unwrap_or(b.len())
}

/// `tag` (like `;t=`) at `at`, then a canonical decimal of 1 to 15 digits; returns the
/// value and the position after the digits.
fn ms_field(b: &[u8], at: usize, tag: &[u8; 3]) -> Option<(u64, usize)> {
    let digits = b.get(at..)?.strip_prefix(tag)?;
    // Digits are read and added up in one loop; more than 15 cannot overflow (16 at most
    // are read).
    let (mut value, mut len) = (0u64, 0);
    for &d in digits.iter().take(16) {
        let digit = d.wrapping_sub(b'0');
        if digit > 9 {
            break;
        }
        value = value * 10 + u64::from(digit);
        len += 1;
    }
    if len == 0 || len > 15 || (len > 1 && digits[0] == b'0') {
        return None;
    }
    Some((value, at + 3 + len))
}

/// The covered list starting at `start`: returns how many names and where it ends (at
/// the next byte that is neither a name byte nor `,`).
fn covered_list(b: &[u8], start: usize) -> Option<(usize, usize)> {
    let mut at = start;
    let mut count = 0;
    let mut previous: &[u8] = &[];
    if b.get(at) == Some(&b';') {
        return Some((0, at));
    }
    loop {
        let name = &b[at..at + name_len(&b[at..])];
        if name.is_empty()
            || name.len() > MAX_COVERED_NAME_LEN
            || count == MAX_COVERED_ATTRIBUTES
            || (count > 0 && previous >= name)
        {
            return None;
        }
        previous = name;
        count += 1;
        at += name.len();
        if b.get(at) != Some(&b',') {
            return Some((count, at));
        }
        at += 1;
    }
}

fn field<'a>(
    part: Option<&'a str>,
    name: &'static str,
    missing: &'static str,
) -> Result<&'a str, SecurityError> {
    part.and_then(|p| p.strip_prefix(name))
        .ok_or_else(|| malformed(missing))
}

fn parse_ms(value: &str) -> Result<u64, SecurityError> {
    let ok = !value.is_empty()
        && value.len() <= 15
        && value.bytes().all(|b| b.is_ascii_digit())
        && (value == "0" || !value.starts_with('0'));
    if !ok {
        return Err(malformed(
            "timestamp is not a canonical decimal of at most 15 digits",
        ));
    }
    value
        .parse()
        .map_err(|_| malformed("timestamp out of range"))
}

fn check_version(version: &str) -> Result<(), SecurityError> {
    if version == "1" {
        return Ok(());
    }
    // Echo only what looks like a version number; the rest is untrusted text.
    let shown =
        if !version.is_empty() && version.len() <= 4 && version.bytes().all(|b| b.is_ascii_digit())
        {
            version.to_owned()
        } else {
            "?".to_owned()
        };
    Err(SecurityError::UnsupportedVersion { version: shown })
}

/// Checks the covered-name list (`a=`): valid names, strictly ascending, at most
/// [`MAX_COVERED_ATTRIBUTES`]. Returns how many.
fn check_covered(list: &str) -> Result<usize, SecurityError> {
    if list.is_empty() {
        return Ok(0);
    }
    let mut previous: Option<&str> = None;
    let mut count = 0;
    for name in list.split(',') {
        let valid = !name.is_empty()
            && name.len() <= MAX_COVERED_NAME_LEN
            && name.bytes().all(|b| NAME_BYTE[usize::from(b)]);
        if !valid {
            return Err(malformed("invalid covered attribute name"));
        }
        if previous.is_some_and(|prev| prev >= name) {
            return Err(malformed(
                "covered attribute names are not strictly ascending",
            ));
        }
        if count == MAX_COVERED_ATTRIBUTES {
            return Err(malformed("too many covered attributes"));
        }
        previous = Some(name);
        count += 1;
    }
    Ok(count)
}

/// Every byte of a `u64`.
const BYTES: u64 = 0x0101_0101_0101_0101;

/// The 8 hex digits of `x` (most significant first), computed in one `u64`: the nibbles
/// are spread one per byte, then turned into ASCII all at once.
fn hex8(x: u32) -> [u8; 8] {
    let x = u64::from(x);
    let mut v = ((x & 0xffff_0000) << 16) | (x & 0x0000_ffff);
    v = ((v & 0x0000_ff00_0000_ff00) << 8) | (v & 0x0000_00ff_0000_00ff);
    v = ((v & 0x00f0_00f0_00f0_00f0) << 4) | (v & 0x000f_000f_000f_000f);
    // 1 in each byte whose nibble is 10 or more (a letter).
    let letters = ((v + 6 * BYTES) >> 4) & BYTES;
    (v + 0x30 * BYTES + letters * 0x27).to_be_bytes()
}

/// The value of 8 lowercase hex digits (most significant first), or `None` if any byte is
/// not one: each byte's range is checked in parallel in a `u64` (bit 7 of each byte
/// answers `>=` or `>` for the byte below it).
fn unhex8(digits: [u8; 8]) -> Option<u32> {
    const HIGH: u64 = 0x80 * BYTES;
    let c = u64::from_be_bytes(digits);
    if c & HIGH != 0 {
        return None;
    }
    // Every byte is below 0x80, so no sum below carries into the next byte.
    let at_least = |lo: u64| c + (0x80 - lo) * BYTES;
    let above = |hi: u64| c + (0x7f - hi) * BYTES;
    let digit = at_least(0x30) & !above(0x39);
    let letter = at_least(0x61) & !above(0x66);
    if (digit | letter) & HIGH != HIGH {
        return None;
    }
    let mut v = (c & (0x0f * BYTES)) + ((c >> 6) & BYTES) * 9;
    v = (v | (v >> 4)) & 0x00ff_00ff_00ff_00ff;
    v = (v | (v >> 8)) & 0x0000_ffff_0000_ffff;
    v = (v | (v >> 16)) & 0xffff_ffff;
    u32::try_from(v).ok()
}

/// Decodes exactly 64 lowercase hex digits (the only spelling the envelope accepts), 16 at
/// a time.
fn decode_mac(digits: &[u8]) -> Option<[u8; 32]> {
    let digits: &[u8; 64] = digits.try_into().ok()?;
    let mut mac = [0u8; 32];
    for (word, sixteen) in mac.chunks_exact_mut(8).zip(digits.chunks_exact(16)) {
        let high = unhex8(sixteen[..8].try_into().ok()?)?;
        let low = unhex8(sixteen[8..].try_into().ok()?)?;
        word.copy_from_slice(&((u64::from(high) << 32) | u64::from(low)).to_be_bytes());
    }
    Some(mac)
}

/// Writes `v=1;k=<key>;t=<ms>[;n=<ms>];a=` (the covered names follow).
pub(crate) fn put_envelope_head(
    out: &mut impl Sink,
    key_id: &str,
    signed_at_ms: u64,
    not_before_ms: Option<u64>,
) {
    out.put(b"v=1;k=");
    out.put(key_id.as_bytes());
    out.put(b";t=");
    put_decimal(out, signed_at_ms);
    if let Some(n) = not_before_ms {
        out.put(b";n=");
        put_decimal(out, n);
    }
    out.put(b";a=");
}

/// Writes `;s=<64 lowercase hex digits>`.
pub(crate) fn put_envelope_mac(out: &mut impl Sink, mac: &[u8; 32]) {
    out.put(b";s=");
    for four in mac.chunks_exact(4) {
        let word = u32::from_be_bytes([four[0], four[1], four[2], four[3]]);
        out.put(&hex8(word));
    }
}

/// "00" to "99".
static DIGIT_PAIRS: [u8; 200] = {
    let mut table = [0u8; 200];
    let mut i = 0;
    while i < 100 {
        table[2 * i] = b'0' + (i / 10) as u8;
        table[2 * i + 1] = b'0' + (i % 10) as u8;
        i += 1;
    }
    table
};

/// Writes `value` in decimal, two digits per division.
fn put_decimal(out: &mut impl Sink, mut value: u64) {
    let mut digits = [0u8; 20];
    let mut start = digits.len();
    while value >= 10 {
        let pair = 2 * (value % 100) as usize;
        value /= 100;
        start -= 2;
        digits[start..start + 2].copy_from_slice(&DIGIT_PAIRS[pair..pair + 2]);
    }
    if value > 0 || start == digits.len() {
        start -= 1;
        digits[start] = b'0' + value as u8;
    }
    out.put(&digits[start..]);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mac_hex() -> String {
        "0123456789abcdef".repeat(4)
    }

    #[test]
    fn both_parsers_agree_on_accepted_and_refused_texts() {
        let hex = mac_hex();
        let cases = [
            format!("v=1;k=k1;t=0;a=;s={hex}"),
            format!("v=1;k=k1;t=1700000000000;n=1700000000500;a=a,b.c,z_z;s={hex}"),
            format!("v=1;k=a.b-c_D9;t=999999999999999;a=x;s={hex}"),
            format!("v=1;k={};t=1;a=x;s={hex}", "k".repeat(64)),
            format!("v=1;k={};t=1;a=x;s={hex}", "k".repeat(65)),
            format!("v=1;k=k1;t=1;a={};s={hex}", "n".repeat(128)),
            format!("v=1;k=k1;t=1;a={};s={hex}", "n".repeat(129)),
            format!("v=2;k=k1;t=0;a=;s={hex}"),
            format!("v=1;k=;t=0;a=;s={hex}"),
            format!("v=1;k=k 1;t=0;a=;s={hex}"),
            format!("v=1;k=k1;t=01;a=;s={hex}"),
            format!("v=1;k=k1;t=;a=;s={hex}"),
            format!("v=1;k=k1;t=1000000000000000;a=;s={hex}"),
            format!("v=1;k=k1;t=1;n=;a=;s={hex}"),
            format!("v=1;k=k1;t=1;a=b,a;s={hex}"),
            format!("v=1;k=k1;t=1;a=a,a;s={hex}"),
            format!("v=1;k=k1;t=1;a=a,;s={hex}"),
            format!("v=1;k=k1;t=1;a=,a;s={hex}"),
            format!("v=1;k=k1;t=1;a=a;s={hex};x=1"),
            format!("v=1;k=k1;t=1;a=a;s={}", hex.to_uppercase()),
            format!("v=1;k=k1;t=1;a=a;s={hex}0"),
            format!("v=1;k=k1;t=1;a=a;s={}", &hex[1..]),
            format!("v=1;k=k1;t=1;a=a;x=1;s={hex}"),
            format!("v=1;k=k1;a=a;s={hex}"),
            "v=1;k=k1".to_owned(),
            String::new(),
        ];
        for text in &cases {
            let fast = EnvelopeRef::parse_fast(text);
            let checked = EnvelopeRef::parse_checked(text).ok();
            assert_eq!(fast, checked, "{text}");
        }
        let many: Vec<String> = (0..65).map(|i| format!("n{i:03}")).collect();
        for count in [64, 65] {
            let text = format!("v=1;k=k1;t=1;a={};s={hex}", many[..count].join(","));
            let fast = EnvelopeRef::parse_fast(&text);
            assert_eq!(fast, EnvelopeRef::parse_checked(&text).ok(), "{count}");
            assert_eq!(fast.is_some(), count == 64);
        }
    }

    #[test]
    fn hex_words_match_the_hex_crate_both_ways() {
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        for i in 0..20_000u32 {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let word = if i < 16 {
                0x1111_1111 * i
            } else {
                state as u32
            };
            let digits = hex8(word);
            assert_eq!(
                digits.as_slice(),
                hex::encode(word.to_be_bytes()).as_bytes()
            );
            assert_eq!(unhex8(digits), Some(word));
        }
    }

    #[test]
    fn every_non_digit_byte_in_every_position_is_refused() {
        for position in 0..8 {
            for byte in 0..=255u8 {
                let mut digits = *b"0123abcd";
                digits[position] = byte;
                let valid = byte.is_ascii_digit() || (b'a'..=b'f').contains(&byte);
                assert_eq!(unhex8(digits).is_some(), valid, "{position} {byte:#x}");
            }
        }
        assert_eq!(decode_mac(&[b'0'; 63]), None);
        assert_eq!(decode_mac(&[b'f'; 64]), Some([0xff; 32]));
    }

    #[test]
    fn decimals_match_fmt() {
        let mut values = vec![0, 1, 9, 10, 11, 99, 100, 101, 999, 1000, u64::MAX];
        values.extend((0..64).map(|shift| 1u64 << shift));
        values.extend((1..20).map(|exp| 10u64.pow(exp) - 1));
        values.extend((1..20).map(|exp| 10u64.pow(exp)));
        for value in values {
            let mut out = Vec::new();
            put_decimal(
                &mut crate::canonical::FnSink(|b: &[u8]| out.extend_from_slice(b)),
                value,
            );
            assert_eq!(String::from_utf8(out).unwrap(), value.to_string());
        }
    }

    #[test]
    fn names_split_the_covered_list() {
        let text = format!("v=1;k=k1;t=1;a=a,b.c,z_z;s={}", mac_hex());
        let envelope = EnvelopeRef::parse(&text).unwrap();
        assert_eq!(envelope.names().collect::<Vec<_>>(), ["a", "b.c", "z_z"]);
        let empty = format!("v=1;k=k1;t=1;a=;s={}", mac_hex());
        assert_eq!(EnvelopeRef::parse(&empty).unwrap().names().count(), 0);
    }
}
