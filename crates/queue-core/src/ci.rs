//! The one answer to "is this CI?", and the skip-or-fail rule for tests that need a server.
//!
//! CI sets `CI` (GitHub Actions and `.ci/run` set `CI=true`). Any value other than empty,
//! `0` or `false` (any case) counts, so `CI=1` and `CI=yes` do and `CI=false` does not.
//! Tests that need a server read its address from a `QUEUE_TEST_*` variable: unset, they
//! skip with a note on a developer's machine and fail in CI, where the servers must run.

/// Whether the process runs under CI (see the [module docs](self)).
pub fn is_ci() -> bool {
    ci_value_means_ci(std::env::var("CI").ok().as_deref())
}

/// Whether a value of `CI` means CI: set, and not empty, `0` or `false` (any case).
pub fn ci_value_means_ci(value: Option<&str>) -> bool {
    value.is_some_and(|v| !matches!(v.trim().to_ascii_lowercase().as_str(), "" | "0" | "false"))
}

/// The value of the server variable `var` for a test. When it is unset or empty: panics
/// under CI; otherwise prints to stderr that `test` is skipped (`starts` names what
/// would start the server, e.g. "cargo xtask test starts moto") and returns `None`.
#[allow(clippy::print_stderr)]
pub fn test_server(var: &str, test: &str, starts: &str) -> Option<String> {
    match std::env::var(var) {
        Ok(v) if !v.trim().is_empty() => Some(v),
        _ if is_ci() => panic!("{test}: {var} is unset under CI; {starts}"),
        _ => {
            eprintln!("{test} skipped: {var} is unset ({starts})");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::ci_value_means_ci;

    #[test]
    fn ci_values() {
        for v in ["true", "TRUE", "1", "yes", " true "] {
            assert!(ci_value_means_ci(Some(v)), "{v}");
        }
        for v in ["", " ", "0", "false", "False", "FALSE"] {
            assert!(!ci_value_means_ci(Some(v)), "{v}");
        }
        assert!(!ci_value_means_ci(None));
    }
}
