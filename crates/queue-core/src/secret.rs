//! Secret values: re-exports of [`secrecy`] so every crate uses the same types.
//!
//! A [`SecretString`] has no `Display` and no `Serialize`; its `Debug` prints
//! `[REDACTED]`; its memory is zeroed on drop; reading it takes an explicit
//! [`ExposeSecret::expose_secret`] call, easy to find in review.

pub use secrecy::{ExposeSecret, SecretBox, SecretString};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_string_never_prints() {
        let s = SecretString::from("CANARY-secret-string");
        assert!(!format!("{s:?}").contains("CANARY"));
        assert_eq!(s.expose_secret(), "CANARY-secret-string");
    }
}
