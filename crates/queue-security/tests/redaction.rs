//! `redact_text`: idempotent on every input, linear in the input length, and the saved
//! fuzz finding stays fixed.

use std::time::{Duration, Instant};

use proptest::prelude::*;
use queue_security::redact::{REDACTED, redact_text};

/// `fuzz-findings/redaction-crash-c23d5018.bin`: a second pass used to remove `&w`
/// (a URL user-info scan that ran through a value the first pass had replaced).
const FUZZ_C23D5018: &[u8] = b"ohttps://sig:ps/s=/ig=QzFu\x8d:zzCuser,\x8dw@hoseoser:\x8d:\x8dw@h\x17ose\xf2:&m@htsis://sig=QzFugithub_pat_io&w@htps://sigps://sig=QzFugithub_pat_io&w@htpw://s\x8d:\x8dw@hose\xf2:&w@htps:_io&w@htpw://s\x8d:\x8dw@hose&w@\xa0\x8b\x8f\x8c\xc5\xd0\xd0\x8cige\xf2:&mh@tps://sig=Qz=QzFpat_github_pat_pat_io&w@st\x0a\x00Sig=\x00";

#[test]
fn saved_fuzz_input_is_idempotent() {
    assert_eq!(FUZZ_C23D5018.len(), 253);
    queue_security::fuzzing::redaction(FUZZ_C23D5018);
    let text = String::from_utf8_lossy(FUZZ_C23D5018);
    let once = redact_text(&text);
    assert_eq!(redact_text(&once), once);
}

#[test]
fn values_hidden_behind_a_redacted_word_are_redacted() {
    for (input, secret) in [
        ("Bearer password: CanaryPw6 &", "CanaryPw6"),
        ("token=Bearer CanaryTok7;", "CanaryTok7"),
        ("x://u:sig=abc/d&w@host", "abc/d"),
        ("a://token:CanaryUrl8@h", "CanaryUrl8"),
    ] {
        let out = redact_text(input);
        assert!(!out.contains(secret), "{input:?} -> {out:?}");
        assert_eq!(redact_text(&out), out, "{input:?}");
    }
    assert_eq!(
        redact_text("amqps://user:pw@host:5671/"),
        "amqps://[REDACTED]@host:5671/"
    );
    assert_eq!(redact_text("http://[::1]:8080/x"), "http://[::1]:8080/x");
}

/// Inputs that made the old implementation quadratic (every key re-scanned the rest of
/// the text). Wall time is only a coarse guard here (10x the bench bound, debug build);
/// the figure that counts is the criterion bench `redact/1MiB`.
#[test]
fn adversarial_megabyte_is_linear() {
    let patterns = [
        "SharedAccessKey=a ",
        "sig=\"x ",
        "a://b:c",
        "Bearer password: ",
        "wJalrXUtnFEMI/K7MDENG/",
        "[REDACTED]",
    ];
    for p in patterns {
        let text = p.repeat((1 << 20) / p.len());
        let t = Instant::now();
        let out = redact_text(&text);
        let elapsed = t.elapsed();
        assert_eq!(redact_text(&out), out, "pattern {p:?}");
        assert!(
            elapsed < Duration::from_secs(2),
            "pattern {p:?}: {elapsed:?} for 1 MiB"
        );
    }
}

fn fragment() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("SharedAccessKey=".to_owned()),
        Just("AccountKey=".to_owned()),
        Just("sig=".to_owned()),
        Just("password: ".to_owned()),
        Just("Bearer ".to_owned()),
        Just("ghp_".to_owned()),
        Just("://".to_owned()),
        Just(REDACTED.to_owned()),
        Just("wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY".to_owned()),
        "[ a-zA-Z0-9=;:,&@/\"'\\[\\]\\n\\\\+._-]{0,6}",
        any::<String>().prop_map(|s| s.chars().take(3).collect()),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(4_000))]

    #[test]
    fn redaction_is_idempotent(parts in prop::collection::vec(fragment(), 0..16)) {
        let text = parts.concat();
        let once = redact_text(&text);
        prop_assert_eq!(redact_text(&once), once.clone(), "input {:?}", text);
    }

    #[test]
    fn planted_secret_never_survives(
        before in prop::collection::vec(fragment(), 0..6),
        after in prop::collection::vec(fragment(), 0..6),
        key in prop_oneof![Just("SharedAccessKey="), Just("AccountKey="), Just("sig="), Just("Bearer ")],
    ) {
        let secret = "QzPropCanary9";
        let text = format!("{};{key}{secret};{}", before.concat(), after.concat());
        let out = redact_text(&text);
        prop_assert!(!out.contains(secret), "{:?} -> {:?}", text, out);
    }
}
