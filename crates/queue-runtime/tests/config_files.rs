//! Configuration files as documented in docs/configuration.md: TOML, JSON and YAML; errors
//! that name the file, line, column and the key as written; enum values listed; the
//! application's own settings in the `app` table.

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
};

use queue_runtime::{QueueError, QueueRuntimeConfig, SessionMode, build_provider};

const CANARY: &str = "CANARY-cfgfile-7f3e";

/// A fresh directory for one test's files, removed on drop.
struct Dir(PathBuf);

impl Dir {
    fn new(test: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("qr-cfgfile-{}-{test}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }

    fn file(&self, name: &str, text: &str) -> PathBuf {
        let path = self.0.join(name);
        std::fs::write(&path, text).unwrap();
        path
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        std::fs::remove_dir_all(&self.0).ok();
    }
}

fn load(path: &Path) -> Result<QueueRuntimeConfig, QueueError> {
    QueueRuntimeConfig::load_from(Some(path), Some(HashMap::new()))
}

fn config_error(err: QueueError) -> (String, String) {
    match err {
        QueueError::Config { field, reason } => (field, reason),
        other => panic!("expected a config error, got {other:?}"),
    }
}

const TOML: &str = r#"queue = "pull-requests"
[provider]
kind = "memory"
profile = "sqs"
[processor]
max_concurrent_sessions = 3
receive_wait = "250ms"
session_mode = "required"
[processor.retry]
max_attempts = 4
"#;

const JSON: &str = r#"{
  "queue": "pull-requests",
  "provider": { "kind": "memory", "profile": "sqs" },
  "processor": {
    "max_concurrent_sessions": 3,
    "receive_wait": "250ms",
    "session_mode": "required",
    "retry": { "max_attempts": 4 }
  }
}
"#;

const YAML: &str = r#"queue: pull-requests
provider:
  kind: memory
  profile: sqs
processor:
  max_concurrent_sessions: 3
  receive_wait: 250ms
  session_mode: required
  retry:
    max_attempts: 4
"#;

#[test]
fn the_same_settings_load_from_toml_json_and_yaml() {
    let dir = Dir::new("formats");
    let from_toml = load(&dir.file("runtime.toml", TOML)).unwrap();
    assert_eq!(from_toml.queue, "pull-requests");
    assert_eq!(from_toml.processor.max_concurrent_sessions, 3);
    assert_eq!(from_toml.processor.session_mode, SessionMode::Required);
    assert_eq!(from_toml.processor.retry.max_attempts, 4);
    for (name, text) in [
        ("runtime.json", JSON),
        ("runtime.yaml", YAML),
        ("runtime.yml", YAML),
    ] {
        let cfg = load(&dir.file(name, text)).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(format!("{cfg:?}"), format!("{from_toml:?}"), "{name}");
    }
}

#[test]
fn a_missing_file_and_an_unknown_extension_name_the_path() {
    let dir = Dir::new("missing");
    let missing = dir.0.join("nope.toml");
    let (_, reason) = config_error(load(&missing).unwrap_err());
    assert!(reason.contains(&missing.display().to_string()), "{reason}");
    assert!(reason.contains("does not exist"), "{reason}");

    let ini = dir.file("runtime.ini", "queue = q\n");
    let (_, reason) = config_error(load(&ini).unwrap_err());
    assert!(reason.contains("runtime.ini"), "{reason}");
    assert!(
        reason.contains(".toml, .json, .yaml or .yml"),
        "the error lists the formats: {reason}"
    );
}

#[test]
fn syntax_errors_name_file_line_and_column_without_quoting_the_line() {
    let dir = Dir::new("syntax");
    let cases = [
        (
            "bad.toml",
            format!("queue = \"q\"\n[provider]\nkind = \"sqs\"\nsecret_access_key = \"{CANARY}\n"),
            ":4:",
        ),
        (
            "bad.json",
            format!(
                "{{\n  \"queue\": \"q\",\n  \"provider\": {{ \"connection_string\": \"{CANARY}\" ]\n}}\n"
            ),
            ":3:",
        ),
        (
            "bad.yaml",
            format!("queue: q\nprovider:\n  kind: sqs\n  secret_access_key: [\"{CANARY}\"\n"),
            ":5:",
        ),
    ];
    for (name, text, line) in cases {
        let path = dir.file(name, &text);
        let (field, reason) = config_error(load(&path).unwrap_err());
        assert_eq!(field, "<file>", "{name}");
        let at = format!("{}{line}", path.display());
        assert!(reason.contains(&at), "{name}: expected `{at}` in: {reason}");
        assert!(reason.contains("syntax error"), "{name}: {reason}");
        assert!(!reason.contains(CANARY), "{name} leaked the line: {reason}");
    }
}

#[test]
fn key_errors_name_the_key_as_written_and_where_it_is() {
    let dir = Dir::new("keys");
    let cases = [
        (
            "typo.toml",
            "queue = \"q\"\n\n[processor]\nmax_sesions = 3\n",
            "processor.max_sesions",
            ":4:1)",
        ),
        (
            "typo.yaml",
            "queue: q\nprocessor:\n  retry:\n    max_atempts: 3\n",
            "processor.retry.max_atempts",
            ":4:5)",
        ),
        // Provider keys are checked by the provider crate, so when it is compiled in.
        #[cfg(feature = "aws")]
        (
            "typo.json",
            "{\"queue\": \"q\",\n \"provider\": {\n   \"kind\": \"sqs\",\n   \"regoin\": \"eu-west-1\"\n }\n}\n",
            "provider.regoin",
            ":4:4)",
        ),
        #[cfg(feature = "memory")]
        (
            "typo-memory.yaml",
            "queue: q\nprovider:\n  kind: memory\n  profil: sqs\n",
            "provider.profil",
            ":4:3)",
        ),
    ];
    for (name, text, key, at) in cases {
        let path = dir.file(name, text);
        let (field, reason) = config_error(load(&path).unwrap_err());
        assert_eq!(field, key, "{name}: {reason}");
        let at = format!("{}{at}", path.display());
        assert!(reason.contains(&at), "{name}: expected `{at}` in: {reason}");
    }

    // A type error names the key and where it is, not the value.
    let path = dir.file(
        "type.toml",
        &format!("queue = \"q\"\n[processor]\nmax_concurrent_sessions = \"{CANARY}\"\n"),
    );
    let (field, reason) = config_error(load(&path).unwrap_err());
    assert_eq!(field, "processor.max_concurrent_sessions");
    assert!(reason.contains(":3:1)"), "{reason}");
    assert!(!reason.contains(CANARY), "{reason}");
}

#[test]
fn enum_errors_list_the_valid_values() {
    let (field, reason) = config_error(
        QueueRuntimeConfig::from_toml_str(
            "queue = \"q\"\n[processor]\nsession_mode = \"sometimes\"\n",
        )
        .unwrap_err(),
    );
    assert_eq!(field, "processor.session_mode");
    assert!(reason.contains("`auto`, `required`, `none`"), "{reason}");

    let (field, reason) = config_error(
        QueueRuntimeConfig::from_toml_str("queue = \"q\"\n[provider]\nkind = \"rabbit\"\n")
            .unwrap_err(),
    );
    assert_eq!(field, "provider.kind");
    assert!(
        reason.contains("`memory`, `sqs`, `service-bus`"),
        "{reason}"
    );
}

#[derive(Debug, serde::Deserialize)]
struct BotSettings {
    greeting: String,
    #[serde(default)]
    max_comments: u32,
    token: String,
}

#[test]
fn app_settings_live_next_to_the_runtime_settings() {
    let dir = Dir::new("app");
    let toml = dir.file(
        "bot.toml",
        &format!(
            "queue = \"q\"\n[app]\ngreeting = \"hi\"\nmax_comments = 2\ntoken = \"{CANARY}\"\n"
        ),
    );
    let yaml = dir.file(
        "bot.yaml",
        &format!("queue: q\napp:\n  greeting: hi\n  max_comments: 2\n  token: {CANARY}\n"),
    );
    for path in [&toml, &yaml] {
        let cfg = load(path).unwrap();
        let app: BotSettings = cfg.app().unwrap();
        assert_eq!((app.greeting.as_str(), app.max_comments), ("hi", 2));
        assert_eq!(app.token, CANARY);
        assert!(
            !format!("{cfg:?}").contains(CANARY),
            "app settings in Debug"
        );
    }

    // The environment overrides app settings like any other key.
    let env: HashMap<String, String> = [("QUEUE_RUNTIME__APP__GREETING", "hello")]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    let cfg = QueueRuntimeConfig::load_from(Some(&toml), Some(env)).unwrap();
    assert_eq!(cfg.app::<BotSettings>().unwrap().greeting, "hello");

    // The application's mistakes name its keys.
    let cfg =
        QueueRuntimeConfig::from_toml_str("queue = \"q\"\n[app]\ngreeting = \"hi\"\n").unwrap();
    let (field, _) = config_error(cfg.app::<BotSettings>().unwrap_err());
    assert_eq!(field, "app.token");

    // Settings outside `app` and the runtime's keys point users to `app`.
    let stray = dir.file("stray.toml", "queue = \"q\"\ngreeting = \"hi\"\n");
    let (field, reason) = config_error(load(&stray).unwrap_err());
    assert_eq!(field, "greeting");
    assert!(reason.contains("`app` table"), "{reason}");
    assert!(reason.contains("stray.toml:2:1"), "{reason}");
}

#[tokio::test]
async fn provider_errors_use_the_keys_users_write() {
    let cfg = QueueRuntimeConfig::from_toml_str(
        "queue = \"q\"\n[provider]\nkind = \"memory\"\nprofile = \"rabbit\"\n",
    )
    .unwrap();
    let (field, _) = config_error(build_provider(&cfg.provider).await.unwrap_err());
    assert_eq!(field, "provider.profile");
}

#[test]
fn environment_errors_have_no_file_position() {
    let dir = Dir::new("env");
    let path = dir.file(
        "runtime.toml",
        "queue = \"q\"\n[processor]\nmax_concurrent_sessions = 2\n",
    );
    let env: HashMap<String, String> = [(
        "QUEUE_RUNTIME__PROCESSOR__MAX_CONCURRENT_SESSIONS".to_owned(),
        "many".to_owned(),
    )]
    .into_iter()
    .collect();
    let (field, reason) =
        config_error(QueueRuntimeConfig::load_from(Some(&path), Some(env)).unwrap_err());
    assert_eq!(field, "processor.max_concurrent_sessions");
    assert!(!reason.contains("runtime.toml"), "{reason}");
}
