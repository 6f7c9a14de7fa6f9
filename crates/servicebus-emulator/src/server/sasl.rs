//! The protocol header exchange and SASL (ANONYMOUS, MSSBCBS, PLAIN).

use super::frames::{frame, read_frame};
use super::*;

/// Protocol header exchange and optional SASL. Returns whether SASL PLAIN proved the key.
pub(super) async fn handshake(
    r: &mut BoxRead,
    w: &mut BoxWrite,
    shared: &Shared,
) -> Result<bool, ConnError> {
    let mut hdr = [0u8; 8];
    r.read_exact(&mut hdr).await?;
    // Without a configured key every client is trusted; with one, the connection must
    // prove it knows the key (SASL PLAIN, or a verified `$cbs` token) before using entities.
    let mut authorized = shared.key.is_none();
    if &hdr[..4] != b"AMQP" {
        return Err(ConnError::Protocol("not AMQP".into()));
    }
    if hdr[4] == 3 {
        w.write_all(b"AMQP\x03\x01\x00\x00").await?;
        let mechs = SaslMechanisms {
            sasl_server_mechanisms: serde_amqp::primitives::Array(vec![
                Symbol::from("MSSBCBS"),
                Symbol::from("PLAIN"),
                Symbol::from("ANONYMOUS"),
            ]),
        };
        w.write_all(&frame(1, 0, &serde_amqp::to_vec(&mechs)?, &[]))
            .await?;
        let (_, _, body) = read_frame(r).await?;
        let init: SaslInit = crate::codec::decode(&body)?;
        let ok = sasl_ok(
            &init,
            shared.key.as_ref().map(|(n, k)| (n.as_str(), k.as_str())),
        );
        let outcome = SaslOutcome {
            code: if ok { SaslCode::Ok } else { SaslCode::Auth },
            additional_data: None,
        };
        w.write_all(&frame(1, 0, &serde_amqp::to_vec(&outcome)?, &[]))
            .await?;
        if !ok {
            return Err(ConnError::Protocol("SASL authentication failed".into()));
        }
        authorized |= init.mechanism.as_str() == "PLAIN";
        r.read_exact(&mut hdr).await?;
    }
    if hdr != *b"AMQP\x00\x01\x00\x00" {
        w.write_all(b"AMQP\x00\x01\x00\x00").await?;
        return Err(ConnError::Protocol("unsupported protocol header".into()));
    }
    w.write_all(&hdr).await?;
    Ok(authorized)
}

pub(super) fn sasl_ok(init: &SaslInit, key: Option<(&str, &str)>) -> bool {
    match init.mechanism.as_str() {
        "ANONYMOUS" | "MSSBCBS" => true,
        "PLAIN" => {
            let Some((name, key)) = key else { return true };
            let resp = init
                .initial_response
                .as_ref()
                .map(|b| b.as_ref().to_vec())
                .unwrap_or_default();
            let mut parts = resp.split(|b| *b == 0);
            let _authzid = parts.next();
            let user = parts.next().unwrap_or_default();
            let pass = parts.next().unwrap_or_default();
            bool::from(ct_eq_hashed(user, name.as_bytes()) & ct_eq_hashed(pass, key.as_bytes()))
        }
        _ => false,
    }
}

/// Compares two secrets in constant time: their SHA-256 digests are compared with
/// `subtle`, so neither the position of the first difference nor the length leaks.
pub(super) fn ct_eq_hashed(a: &[u8], b: &[u8]) -> subtle::Choice {
    use subtle::ConstantTimeEq;
    let da = ring::digest::digest(&ring::digest::SHA256, a);
    let db = ring::digest::digest(&ring::digest::SHA256, b);
    da.as_ref().ct_eq(db.as_ref())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sasl_plain_checks_user_and_password() {
        let init = |resp: &[u8]| SaslInit {
            mechanism: Symbol::from("PLAIN"),
            initial_response: Some(resp.to_vec().into()),
            hostname: None,
        };
        let key = Some(("policy", "secret"));
        assert!(sasl_ok(&init(b"\0policy\0secret"), key));
        assert!(!sasl_ok(&init(b"\0policy\0secreT"), key));
        assert!(!sasl_ok(&init(b"\0policy\0secret-and-more"), key));
        assert!(!sasl_ok(&init(b"\0other\0secret"), key));
        assert!(!sasl_ok(&init(b"\0policy"), key));
        assert!(sasl_ok(&init(b"anything"), None));
        assert!(bool::from(ct_eq_hashed(b"", b"")));
    }
}
