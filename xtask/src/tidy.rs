//! Repository hygiene checks. `cargo test` runs each as a test (see the bottom of this
//! file); `cargo xtask tidy` runs them all and lists every problem.
//!
//! The checks read files as text with small purpose-built scanners (xtask has no
//! dependencies); each scanner has unit tests on inputs that must fail.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{SystemTime, UNIX_EPOCH};

/// Crates under `crates/` named `queue-*` that are not providers.
const NOT_PROVIDERS: [&str; 7] = [
    "queue-cli",
    "queue-core",
    "queue-conformance",
    "queue-examples",
    "queue-runtime",
    "queue-security",
    "queue-webhook",
];

/// Package name prefixes `queue-core` must not depend on, with the reason.
const FORBIDDEN_IN_CORE: [(&str, &str); 12] = [
    ("aws-", "an AWS SDK crate"),
    ("azure", "an Azure SDK crate"),
    ("fe2o3", "an AMQP stack"),
    ("openssl", "OpenSSL"),
    ("native-tls", "a TLS stack"),
    ("rustls", "a TLS stack"),
    ("ring", "a crypto library"),
    ("hyper", "an HTTP stack"),
    ("reqwest", "an HTTP client"),
    ("h2", "an HTTP/2 stack"),
    ("tonic", "a gRPC stack"),
    ("lapin", "an AMQP client"),
];

/// Runs every check; returns one line per problem.
pub(crate) fn check_all(root: &Path, cargo: &OsStr) -> Vec<String> {
    let mut problems = Vec::new();
    problems.extend(core_is_provider_free(root, cargo));
    problems.extend(providers_run_conformance(root));
    problems.extend(deny_toml_exceptions_have_reasons(root));
    problems.extend(audit_toml_ignores_have_reason_and_expiry(root, today()));
    problems.extend(no_todo_or_unimplemented(root));
    problems.extend(members_use_workspace_lints(root));
    problems.extend(workflows_pin_actions_and_limit_permissions(root));
    problems
}

/// `queue-core`'s normal dependencies (all features, all targets) include no cloud SDK,
/// network or TLS stack, and no OpenSSL.
pub(crate) fn core_is_provider_free(root: &Path, cargo: &OsStr) -> Vec<String> {
    let out = Command::new(cargo)
        .current_dir(root)
        .args([
            "tree",
            "-p",
            "queue-core",
            "-e",
            "normal",
            "--all-features",
            "--target",
            "all",
            "--prefix",
            "none",
            "--format",
            "{p}",
        ])
        .output();
    let out = match out {
        Ok(out) if out.status.success() => out,
        Ok(out) => {
            return vec![format!(
                "cargo tree -p queue-core failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            )];
        }
        Err(e) => return vec![format!("could not run cargo tree: {e}")],
    };
    let tree = String::from_utf8_lossy(&out.stdout);
    if !tree.lines().any(|l| l.starts_with("queue-core ")) {
        return vec![format!("cargo tree printed no queue-core root:\n{tree}")];
    }
    forbidden_packages(&tree)
}

/// Lines of `cargo tree --prefix none` output naming a forbidden package.
pub(crate) fn forbidden_packages(tree: &str) -> Vec<String> {
    let mut problems: Vec<String> = tree
        .lines()
        .filter_map(|line| {
            let name = line.split_whitespace().next()?;
            let (prefix, what) = FORBIDDEN_IN_CORE.iter().find(|(prefix, _)| {
                let base = prefix.trim_end_matches('-');
                name.strip_prefix(base).is_some_and(|rest| {
                    rest.is_empty() || rest.starts_with('-') || rest.starts_with('_')
                })
            })?;
            Some(format!(
                "queue-core depends on `{}` ({what}, matched `{prefix}`); keep cloud and network crates in provider crates",
                line.trim()
            ))
        })
        .collect();
    problems.sort();
    problems.dedup();
    problems
}

/// Directories under `crates/` whose name is a provider crate.
pub(crate) fn provider_crates(root: &Path) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(root.join("crates"))
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.join("Cargo.toml").is_file())
        .filter(|p| {
            p.file_name()
                .and_then(OsStr::to_str)
                .is_some_and(|n| n.starts_with("queue-") && !NOT_PROVIDERS.contains(&n))
        })
        .collect();
    out.sort();
    out
}

/// Every provider crate has `tests/conformance.rs` expanding `conformance_tests!`.
pub(crate) fn providers_run_conformance(root: &Path) -> Vec<String> {
    provider_crates(root)
        .into_iter()
        .filter_map(|dir| {
            let file = dir.join("tests").join("conformance.rs");
            let name = dir
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            match std::fs::read_to_string(&file) {
                Err(_) => Some(format!(
                    "provider crate `{name}` has no tests/conformance.rs running the shared suite"
                )),
                Ok(text) if !invokes_conformance_macro(&text) => Some(format!(
                    "crates/{name}/tests/conformance.rs does not invoke `conformance_tests!`"
                )),
                Ok(_) => None,
            }
        })
        .collect()
}

/// True when a non-comment line invokes `conformance_tests!`.
pub(crate) fn invokes_conformance_macro(text: &str) -> bool {
    text.lines()
        .map(str::trim_start)
        .filter(|l| !l.starts_with("//"))
        .any(|l| l.contains("conformance_tests!"))
}

/// Every entry of `skip`, `skip-tree`, `exceptions`, `ignore` and `deny` in `deny.toml` is an
/// inline table with a `reason`, or (where cargo-deny has no `reason` key, as in license
/// `exceptions`) is preceded by a `# reason: ...` comment.
pub(crate) fn deny_toml_exceptions_have_reasons(root: &Path) -> Vec<String> {
    match std::fs::read_to_string(root.join("deny.toml")) {
        Err(e) => vec![format!("cannot read deny.toml: {e}")],
        Ok(text) => entries_without_reason(&text),
    }
}

pub(crate) fn entries_without_reason(text: &str) -> Vec<String> {
    let mut problems = Vec::new();
    for key in ["skip", "skip-tree", "exceptions", "ignore", "deny"] {
        for (section, entries) in toml_arrays(text, key) {
            for (entry, comments) in entries {
                let has_key = entry.starts_with('{') && inline_table_has_key(&entry, "reason");
                let has_comment = comments
                    .split_once("reason:")
                    .is_some_and(|(_, why)| !why.trim().is_empty());
                if !has_key && !has_comment {
                    problems.push(format!(
                        "deny.toml [{section}] {key}: entry `{}` has no `reason`",
                        entry.split_whitespace().collect::<Vec<_>>().join(" ")
                    ));
                }
            }
        }
    }
    problems
}

/// Every advisory ignored in `audit.toml` has a comment right above it saying
/// `reason: ...` and `expires: YYYY-MM-DD`, and the date has not passed.
pub(crate) fn audit_toml_ignores_have_reason_and_expiry(
    root: &Path,
    today: Option<(i64, u32, u32)>,
) -> Vec<String> {
    match std::fs::read_to_string(root.join("audit.toml")) {
        Err(e) => vec![format!("cannot read audit.toml: {e}")],
        Ok(text) => audit_ignore_problems(&text, today),
    }
}

pub(crate) fn audit_ignore_problems(text: &str, today: Option<(i64, u32, u32)>) -> Vec<String> {
    let mut problems = Vec::new();
    let lines: Vec<&str> = text.lines().collect();
    let Some(start) = lines
        .iter()
        .position(|l| strip_comment(l).trim_start().starts_with("ignore") && l.contains('='))
    else {
        return problems;
    };
    let mut depth = 0i32;
    let mut comments: Vec<&str> = Vec::new();
    for (i, line) in lines.iter().enumerate().skip(start) {
        let code = strip_comment(line);
        let body = if i == start {
            code.split_once('=').map_or("", |(_, v)| v)
        } else {
            code
        };
        let trimmed = line.trim();
        if trimmed.starts_with('#') {
            comments.push(trimmed);
        }
        for id in quoted_strings(body) {
            let note = comments.join(" ");
            let inline = line.split_once('#').map(|(_, c)| c).unwrap_or("");
            let note = format!("{note} {inline}");
            if !note.contains("reason:") {
                problems.push(format!(
                    "audit.toml ignores {id} without a `# reason: ...` comment"
                ));
            }
            match note
                .split_once("expires:")
                .and_then(|(_, rest)| parse_date(rest.trim().get(..10)?))
            {
                None => problems.push(format!(
                    "audit.toml ignores {id} without an `expires: YYYY-MM-DD` date"
                )),
                Some(date) => {
                    if today.is_some_and(|t| days_from_civil(t) > days_from_civil(date)) {
                        problems.push(format!(
                            "audit.toml: the ignore of {id} expired on {}-{:02}-{:02}; re-check the advisory",
                            date.0, date.1, date.2
                        ));
                    }
                }
            }
            comments.clear();
        }
        depth += body.matches('[').count() as i32 - body.matches(']').count() as i32;
        if depth <= 0 && i >= start && body.contains(']') {
            break;
        }
    }
    problems
}

/// No `todo` or `unimplemented` macro calls in the sources of `crates/*/src`.
pub(crate) fn no_todo_or_unimplemented(root: &Path) -> Vec<String> {
    let mut problems = Vec::new();
    for krate in dirs(&root.join("crates")) {
        for file in rust_files(&krate.join("src")) {
            let Ok(text) = std::fs::read_to_string(&file) else {
                continue;
            };
            for (n, line) in text.lines().enumerate() {
                let code = line.trim_start();
                if code.starts_with("//") {
                    continue;
                }
                if code.contains(concat!("todo", "!("))
                    || code.contains(concat!("unimplemented", "!("))
                {
                    problems.push(format!(
                        "{}:{}: stub macro in library code: {}",
                        file.strip_prefix(root).unwrap_or(&file).display(),
                        n + 1,
                        code.trim()
                    ));
                }
            }
        }
    }
    problems
}

/// Every crate under `crates/` and `xtask` opts into the workspace lints.
pub(crate) fn members_use_workspace_lints(root: &Path) -> Vec<String> {
    let mut manifests: Vec<PathBuf> = dirs(&root.join("crates"))
        .into_iter()
        .map(|d| d.join("Cargo.toml"))
        .filter(|m| m.is_file())
        .collect();
    manifests.push(root.join("xtask").join("Cargo.toml"));
    manifests
        .into_iter()
        .filter_map(|m| {
            let text = std::fs::read_to_string(&m).ok()?;
            (!toml_sets_key(&text, "lints", "workspace")).then(|| {
                format!(
                    "{} has no `[lints] workspace = true`",
                    m.strip_prefix(root).unwrap_or(&m).display()
                )
            })
        })
        .collect()
}

/// Every GitHub workflow sets `permissions:` at the top level and pins every action it
/// uses to a full commit SHA.
pub(crate) fn workflows_pin_actions_and_limit_permissions(root: &Path) -> Vec<String> {
    let dir = root.join(".github").join("workflows");
    let mut problems = Vec::new();
    let files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "yml" || e == "yaml"))
        .collect();
    if files.is_empty() {
        problems.push(format!("no workflows in {}", dir.display()));
    }
    for file in files {
        let name = file
            .strip_prefix(root)
            .unwrap_or(&file)
            .display()
            .to_string();
        match std::fs::read_to_string(&file) {
            Ok(text) => problems.extend(workflow_problems(&name, &text)),
            Err(e) => problems.push(format!("cannot read {name}: {e}")),
        }
    }
    problems
}

pub(crate) fn workflow_problems(name: &str, text: &str) -> Vec<String> {
    let mut problems = Vec::new();
    if !text.lines().any(|l| l.starts_with("permissions:")) {
        problems.push(format!(
            "{name}: no top-level `permissions:` (least privilege)"
        ));
    }
    for (n, line) in text.lines().enumerate() {
        let code = line.split(" #").next().unwrap_or(line).trim();
        let Some(spec) = code
            .strip_prefix("- uses:")
            .or_else(|| code.strip_prefix("uses:"))
            .map(str::trim)
        else {
            continue;
        };
        if spec.starts_with("./") || spec.starts_with("docker://") {
            continue;
        }
        let pinned = spec.rsplit_once('@').is_some_and(|(_, rev)| {
            rev.len() == 40
                && rev
                    .chars()
                    .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase())
        });
        if !pinned {
            problems.push(format!(
                "{name}:{}: `{spec}` is not pinned to a full commit SHA",
                n + 1
            ));
        }
    }
    problems
}

fn dirs(dir: &Path) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.is_dir())
        .collect();
    out.sort();
    out
}

fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = entry.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|e| e == "rs") {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

// ---- minimal TOML scanning ------------------------------------------------------------

/// The part of a line before a `#` that is not inside a string.
fn strip_comment(line: &str) -> &str {
    let mut in_str: Option<char> = None;
    let mut escaped = false;
    for (i, c) in line.char_indices() {
        match in_str {
            Some(q) => {
                if escaped {
                    escaped = false;
                } else if c == '\\' && q == '"' {
                    escaped = true;
                } else if c == q {
                    in_str = None;
                }
            }
            None if c == '"' || c == '\'' => in_str = Some(c),
            None if c == '#' => return &line[..i],
            None => {}
        }
    }
    line
}

/// The table header a line opens (`[a.b]` or `[[a]]`), if any.
fn header(line: &str) -> Option<String> {
    let t = strip_comment(line).trim();
    let inner = t
        .strip_prefix("[[")
        .and_then(|r| r.strip_suffix("]]"))
        .or_else(|| t.strip_prefix('[').and_then(|r| r.strip_suffix(']')))?;
    (!inner.contains(['"', '=', ','])).then(|| inner.trim().to_owned())
}

/// True when `[table]` assigns `key` (`key = ...` on its own line).
pub(crate) fn toml_sets_key(text: &str, table: &str, key: &str) -> bool {
    let mut current = String::new();
    for line in text.lines() {
        if let Some(h) = header(line) {
            current = h;
            continue;
        }
        if current == table {
            let code = strip_comment(line);
            if let Some((k, _)) = code.split_once('=')
                && k.trim() == key
            {
                return true;
            }
        }
    }
    false
}

/// For each `key = [ ... ]` in the document: its table and its top-level elements (text).
fn toml_arrays(text: &str, key: &str) -> Vec<(String, Vec<(String, String)>)> {
    let mut out = Vec::new();
    let mut current = String::new();
    let mut lines = text.lines();
    while let Some(line) = lines.next() {
        if let Some(h) = header(line) {
            current = h;
            continue;
        }
        let code = strip_comment(line);
        let Some((k, v)) = code.split_once('=') else {
            continue;
        };
        if k.trim() != key || !v.trim_start().starts_with('[') {
            continue;
        }
        // Collect the array text (with its comments) until its brackets balance.
        let start = line.find('=').map_or(0, |i| i + 1);
        let mut raw = line[start..].trim_start().to_owned();
        let mut code = v.trim_start().to_owned();
        while bracket_depth(&code) > 0 {
            match lines.next() {
                Some(next) => {
                    raw.push('\n');
                    raw.push_str(next);
                    code.push('\n');
                    code.push_str(strip_comment(next));
                }
                None => break,
            }
        }
        out.push((current.clone(), split_array(&raw)));
    }
    out
}

/// `[` and `{` minus `]` and `}`, outside strings.
fn bracket_depth(s: &str) -> i32 {
    let mut depth = 0;
    walk_outside_strings(s, |c| match c {
        '[' | '{' => depth += 1,
        ']' | '}' => depth -= 1,
        _ => {}
    });
    depth
}

fn walk_outside_strings(s: &str, mut f: impl FnMut(char)) {
    let mut in_str: Option<char> = None;
    let mut escaped = false;
    for c in s.chars() {
        match in_str {
            Some(q) => {
                if escaped {
                    escaped = false;
                } else if c == '\\' && q == '"' {
                    escaped = true;
                } else if c == q {
                    in_str = None;
                }
            }
            None if c == '"' || c == '\'' => in_str = Some(c),
            None => f(c),
        }
    }
}

/// The top-level elements of an array literal `[a, {b = 1}, "c"]`, each with the text of
/// the `#` comments that precede it.
fn split_array(array: &str) -> Vec<(String, String)> {
    let inner = array.trim();
    let inner = inner.strip_prefix('[').unwrap_or(inner);
    let inner = inner.strip_suffix(']').unwrap_or(inner);
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut comments = String::new();
    let mut in_comment = false;
    let mut depth = 0i32;
    let mut in_str: Option<char> = None;
    let mut escaped = false;
    for c in inner.chars() {
        if in_comment {
            if c == '\n' {
                in_comment = false;
                comments.push(' ');
            } else {
                comments.push(c);
            }
            continue;
        }
        match in_str {
            Some(q) => {
                if escaped {
                    escaped = false;
                } else if c == '\\' && q == '"' {
                    escaped = true;
                } else if c == q {
                    in_str = None;
                }
                cur.push(c);
            }
            None => match c {
                '#' => in_comment = true,
                '"' | '\'' => {
                    in_str = Some(c);
                    cur.push(c);
                }
                '[' | '{' => {
                    depth += 1;
                    cur.push(c);
                }
                ']' | '}' => {
                    depth -= 1;
                    cur.push(c);
                }
                ',' if depth == 0 => {
                    if !cur.trim().is_empty() {
                        out.push((cur.trim().to_owned(), comments.trim().to_owned()));
                        comments.clear();
                    }
                    cur.clear();
                }
                c => cur.push(c),
            },
        }
    }
    if !cur.trim().is_empty() {
        out.push((cur.trim().to_owned(), comments.trim().to_owned()));
    }
    out
}

/// True when the inline table `{ ... }` has `key = ` at its top level.
fn inline_table_has_key(table: &str, key: &str) -> bool {
    let inner = table.trim().trim_start_matches('{').trim_end_matches('}');
    split_array(&format!("[{inner}]")).iter().any(|(kv, _)| {
        kv.split_once('=')
            .is_some_and(|(k, v)| k.trim() == key && !v.trim().trim_matches('"').trim().is_empty())
    })
}

/// The contents of the double-quoted strings in `s`.
fn quoted_strings(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = s;
    while let Some(start) = rest.find('"') {
        let after = &rest[start + 1..];
        let Some(end) = after.find('"') else { break };
        out.push(after[..end].to_owned());
        rest = &after[end + 1..];
    }
    out
}

/// The feature names defined in a manifest's `[features]` table.
pub(crate) fn manifest_features(manifest: &str) -> Vec<String> {
    let mut current = String::new();
    let mut out = Vec::new();
    for line in manifest.lines() {
        if let Some(h) = header(line) {
            current = h;
            continue;
        }
        if current != "features" {
            continue;
        }
        let code = strip_comment(line);
        if let Some((k, _)) = code.split_once('=') {
            let k = k.trim().trim_matches('"');
            if !k.is_empty()
                && k.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_".contains(c))
            {
                out.push(k.to_owned());
            }
        }
    }
    out
}

// ---- dates ------------------------------------------------------------------------------

/// `YYYY-MM-DD` with a plausible month and day.
pub(crate) fn parse_date(s: &str) -> Option<(i64, u32, u32)> {
    let b = s.as_bytes();
    if b.len() != 10 || b[4] != b'-' || b[7] != b'-' {
        return None;
    }
    let y: i64 = s.get(0..4)?.parse().ok()?;
    let m: u32 = s.get(5..7)?.parse().ok()?;
    let d: u32 = s.get(8..10)?.parse().ok()?;
    ((1..=12).contains(&m) && (1..=31).contains(&d)).then_some((y, m, d))
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
pub(crate) fn days_from_civil((y, m, d): (i64, u32, u32)) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let m = i64::from(m);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The date of a day count since 1970-01-01.
pub(crate) fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// Today's UTC date from the system clock.
pub(crate) fn today() -> Option<(i64, u32, u32)> {
    let secs = SystemTime::now().duration_since(UNIX_EPOCH).ok()?.as_secs();
    Some(civil_from_days(i64::try_from(secs / 86_400).ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn root() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .expect("xtask is in the workspace")
            .to_path_buf()
    }

    fn cargo() -> std::ffi::OsString {
        std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into())
    }

    fn assert_clean(problems: Vec<String>) {
        assert!(
            problems.is_empty(),
            "tidy problems:\n  {}",
            problems.join("\n  ")
        );
    }

    // ---- the checks on this repository ----

    #[test]
    fn tidy_queue_core_pulls_in_no_cloud_sdk_or_openssl() {
        assert_clean(core_is_provider_free(&root(), &cargo()));
    }

    #[test]
    fn tidy_every_provider_crate_runs_the_conformance_suite() {
        assert_clean(providers_run_conformance(&root()));
    }

    #[test]
    fn tidy_every_deny_toml_exception_has_a_reason() {
        assert_clean(deny_toml_exceptions_have_reasons(&root()));
    }

    #[test]
    fn tidy_every_audit_ignore_has_a_reason_and_a_future_expiry() {
        assert_clean(audit_toml_ignores_have_reason_and_expiry(&root(), today()));
    }

    #[test]
    fn tidy_no_stub_macros_in_library_code() {
        assert_clean(no_todo_or_unimplemented(&root()));
    }

    #[test]
    fn tidy_every_member_uses_the_workspace_lints() {
        assert_clean(members_use_workspace_lints(&root()));
    }

    #[test]
    fn tidy_workflows_pin_actions_and_set_permissions() {
        assert_clean(workflows_pin_actions_and_limit_permissions(&root()));
    }

    #[test]
    fn tidy_deny_toml_leaves_the_database_location_to_xtask() {
        let text = std::fs::read_to_string(root().join("deny.toml")).expect("deny.toml");
        assert!(!toml_sets_key(&text, "advisories", "db-path"));
        assert!(!toml_sets_key(&text, "advisories", "db-urls"));
    }

    // ---- the scanners catch what they must ----

    #[test]
    fn forbidden_packages_are_found_by_prefix_and_whole_name() {
        let tree = "queue-core v0.1.0 (/w/crates/queue-core)\nasync-trait v0.1.89 (proc-macro)\n\
                    aws-sdk-sqs v1.0.0\nopenssl-sys v0.9.0\nring v0.17.14\nringbuf v0.3.0\nhyper v1.0.0\n\
                    azure_core v0.20.0\nfe2o3-amqp v0.14.0\nh2 v0.4.0\nh2o v1.0.0\nbytes v1.10.1\n";
        let found = forbidden_packages(tree);
        let names: Vec<&str> = found
            .iter()
            .map(|p| p.split('`').nth(1).unwrap_or_default())
            .collect();
        assert_eq!(
            names,
            [
                "aws-sdk-sqs v1.0.0",
                "azure_core v0.20.0",
                "fe2o3-amqp v0.14.0",
                "h2 v0.4.0",
                "hyper v1.0.0",
                "openssl-sys v0.9.0",
                "ring v0.17.14"
            ]
        );
        assert!(forbidden_packages("queue-core v0.1.0\nbytes v1\nserde v1\n").is_empty());
    }

    #[test]
    fn deny_entries_without_reason_are_reported() {
        let text = r#"
[bans]
deny = [{ crate = "openssl", use-instead = "rustls", reason = "rustls everywhere" }]
skip = [
    { crate = "windows-sys@0.52", reason = "pulled in by tokio and mio; remove once they agree" },
    { crate = "hashbrown@0.14" },
    "bare@1.0", # a comment with reason = "not counted"
]

[licenses]
exceptions = [
    { allow = ["Unicode-3.0"], crate = "unicode-ident", reason = "" },
    { allow = ["MPL-2.0"], crate = "webpki-roots", reason = "weak copyleft, unmodified" },
    # reason: data license, attribution only
    { allow = ["CDLA-Permissive-2.0"], crate = "webpki-root-certs" },
    # reason:
    { allow = ["OpenSSL"], crate = "empty-reason" },
]
"#;
        let problems = entries_without_reason(text);
        assert_eq!(problems.len(), 4, "{problems:#?}");
        assert!(problems[0].contains("hashbrown@0.14"));
        assert!(problems[1].contains("bare@1.0"));
        assert!(
            problems[2].contains("[licenses] exceptions") && problems[2].contains("unicode-ident")
        );
    }

    #[test]
    fn audit_ignores_need_reason_and_unexpired_date() {
        let today = Some((2026, 11, 30));
        let good = "[advisories]\nignore = [\n  # reason: not reachable from our code; expires: 2027-01-31\n  \"RUSTSEC-2024-0001\",\n]\n";
        assert!(audit_ignore_problems(good, today).is_empty());
        assert!(audit_ignore_problems("[advisories]\nignore = []\n", today).is_empty());

        let no_reason =
            "[advisories]\nignore = [\n  # expires: 2027-01-31\n  \"RUSTSEC-2024-0001\",\n]\n";
        assert_eq!(audit_ignore_problems(no_reason, today).len(), 1);
        let no_date = "[advisories]\nignore = [\"RUSTSEC-2024-0001\"] # reason: fine\n";
        let p = audit_ignore_problems(no_date, today);
        assert_eq!(p.len(), 1, "{p:?}");
        assert!(p[0].contains("expires"));
        let expired = "[advisories]\nignore = [\n  # reason: x; expires: 2026-11-29\n  \"RUSTSEC-2024-0001\",\n]\n";
        assert!(audit_ignore_problems(expired, today)[0].contains("expired on 2026-11-29"));
        // The comment covers only the entry right below it.
        let second_bare = "[advisories]\nignore = [\n  # reason: x; expires: 2027-01-01\n  \"RUSTSEC-2024-0001\",\n  \"RUSTSEC-2024-0002\",\n]\n";
        assert_eq!(audit_ignore_problems(second_bare, today).len(), 2);
    }

    #[test]
    fn conformance_macro_must_be_invoked_not_mentioned() {
        assert!(invokes_conformance_macro(
            "queue_conformance::conformance_tests!(factory);"
        ));
        assert!(!invokes_conformance_macro(
            "// queue_conformance::conformance_tests!(factory);\nfn x() {}"
        ));
    }

    #[test]
    fn features_and_keys_are_read_from_their_table() {
        let manifest = "[package]\nname = \"x\"\n\n[features]\ndefault = [\"memory\"]\nmemory = [\"dep:queue-memory\"]\nfull = [\n  \"memory\",\n  \"aws\",\n]\naws = [] # later\n\n[dependencies]\nserde = \"1\"\n";
        assert_eq!(
            manifest_features(manifest),
            ["default", "memory", "full", "aws"]
        );
        assert!(toml_sets_key(
            "[lints]\nworkspace = true\n",
            "lints",
            "workspace"
        ));
        assert!(!toml_sets_key(
            "[lints.rust]\nworkspace = true\n",
            "lints",
            "workspace"
        ));
        assert!(!toml_sets_key(
            "[package]\n# [lints]\nworkspace = true\n",
            "lints",
            "workspace"
        ));
    }

    #[test]
    fn unpinned_actions_and_missing_permissions_are_reported() {
        let good = "on: push\npermissions:\n  contents: read\njobs:\n  a:\n    steps:\n      - uses: actions/checkout@3d3c42e5aac5ba805825da76410c181273ba90b1 # v7.0.1\n      - uses: ./local-action\n";
        assert!(workflow_problems("good.yml", good).is_empty());
        let bad = "on: push\njobs:\n  a:\n    steps:\n      - uses: actions/checkout@v4\n      - name: x\n        uses: Swatinem/rust-cache@6323deb1\n";
        let p = workflow_problems("bad.yml", bad);
        assert_eq!(p.len(), 3, "{p:#?}");
        assert!(p[0].contains("permissions"));
        assert!(p[1].contains("actions/checkout@v4"));
        assert!(p[2].contains("bad.yml:7"));
    }

    #[test]
    fn dates_round_trip() {
        assert_eq!(days_from_civil((1970, 1, 1)), 0);
        assert_eq!(days_from_civil((2000, 3, 1)), 11_017);
        for z in [-1, 0, 59, 60, 11_016, 20_000, 20_787] {
            assert_eq!(days_from_civil(civil_from_days(z)), z);
        }
        assert_eq!(parse_date("2026-02-30"), Some((2026, 2, 30)));
        assert_eq!(parse_date("2026-13-01"), None);
        assert_eq!(parse_date("2026/01/01"), None);
    }
}
