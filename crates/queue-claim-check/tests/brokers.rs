//! The claim-check layer on real servers: SQS and S3 on moto (`QUEUE_TEST_SQS_ENDPOINT`;
//! moto serves both on one port), and Service Bus (the emulator on its TLS port, started
//! here) with Azure Blob on Azurite (`QUEUE_TEST_AZURITE_BLOB_ENDPOINT`). `cargo xtask
//! test` starts moto and Azurite and sets both variables; unset, each test prints a skip
//! note and passes, except under `CI=true`, where it fails.

// Both stores are needed: the helpers below serve the S3 and the Azure Blob tests alike.
#![cfg(all(feature = "aws", feature = "azure"))]
#![allow(clippy::print_stderr)]

mod common;

use std::{
    sync::Arc,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use common::{blobs, github_push, receive_one, round_trip_github_push, server_env};
use queue_claim_check::{
    BlobReference, BlobStore, ClaimCheck, REFERENCE_ATTRIBUTE,
    object_store::{ObjectStore, ObjectStoreExt as _, PutPayload, path::Path},
    reason,
};
use queue_core::{Message, QueueName, QueueProvider, QueueSpec, ReceiveOptions};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

const WAIT: Duration = Duration::from_secs(10);

/// A name no other run uses.
fn unique(prefix: &str) -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!("{prefix}-{}-{nanos}", std::process::id())
}

/// One HTTP/1.1 request; returns the status code.
async fn http(host: &str, head: &str) -> u16 {
    let mut stream = tokio::net::TcpStream::connect(host).await.expect("connect");
    stream.write_all(head.as_bytes()).await.expect("write");
    let mut raw = Vec::new();
    tokio::time::timeout(WAIT, stream.read_to_end(&mut raw))
        .await
        .expect("the server answers")
        .expect("read");
    let text = String::from_utf8_lossy(&raw);
    text.split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

/// Sends a 1 MiB message through `p` and returns the reference its stub carries (read
/// through the inner provider `raw`, then abandoned).
async fn send_and_peek(
    p: &(impl QueueProvider + ?Sized),
    raw: &(impl QueueProvider + ?Sized),
    q: &QueueName,
) -> BlobReference {
    p.send(q, Message::new(github_push(1 << 20))).await.unwrap();
    let stub = receive_one(raw, q, WAIT).await.expect("stub");
    let reference = BlobReference::parse(&stub.message.attributes[REFERENCE_ATTRIBUTE]).unwrap();
    raw.abandon(&stub.receipt, None).await.unwrap();
    reference
}

async fn one_dead_letter_reason(p: &(impl QueueProvider + ?Sized), q: &QueueName) -> String {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let got = p
            .receive_dead_letters(q, ReceiveOptions::new(10, Duration::from_secs(1)))
            .await
            .unwrap();
        if let Some(dead) = got.into_iter().next() {
            p.complete(&dead.receipt).await.unwrap();
            return dead.dead_letter.expect("a reason").reason;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "a dead letter appears"
        );
    }
}

#[cfg(feature = "aws")]
mod sqs_s3 {
    use super::*;
    use queue_aws::{SqsProvider, StaticCredentials};
    use queue_claim_check::object_store::aws::AmazonS3Builder;
    use queue_core::SecretString;

    /// Creates the bucket with an unsigned `PUT /<bucket>`. moto accepts it; real S3 needs
    /// a signed request, and in production the bucket comes from infrastructure code, so
    /// this is test setup only, not something the layer relies on.
    async fn create_bucket(endpoint: &str, bucket: &str) {
        let host = endpoint.trim_start_matches("http://").trim_end_matches('/');
        let head = format!(
            "PUT /{bucket} HTTP/1.1\r\nHost: {host}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        );
        assert_eq!(http(host, &head).await, 200, "bucket created");
    }

    struct Setup {
        provider: ClaimCheck<SqsProvider>,
        objects: Arc<dyn ObjectStore>,
        store: BlobStore,
        queue: QueueName,
    }

    async fn setup() -> Option<Setup> {
        let endpoint = server_env("QUEUE_TEST_SQS_ENDPOINT", "moto")?;
        let bucket = unique("claims");
        create_bucket(&endpoint, &bucket).await;
        let s3 = AmazonS3Builder::new()
            .with_endpoint(endpoint.clone())
            .with_allow_http(true)
            .with_bucket_name(bucket)
            .with_region("us-east-1")
            .with_access_key_id("test")
            .with_secret_access_key("test")
            .build()
            .expect("S3 store");
        let objects: Arc<dyn ObjectStore> = Arc::new(s3);
        let store = BlobStore::new(objects.clone());
        let credentials =
            StaticCredentials::new(SecretString::from("test"), SecretString::from("test"));
        let sqs = SqsProvider::builder()
            .with_region("us-east-1")
            .with_endpoint(endpoint)
            .with_credentials(credentials)
            .build()
            .await
            .expect("SQS provider");
        let provider = ClaimCheck::new(sqs, store.clone());
        let queue = QueueName::new(unique("claims")).unwrap();
        let spec = QueueSpec::default().with_max_delivery_count(5);
        provider.create_queue(&queue, &spec).await.unwrap();
        Some(Setup {
            provider,
            objects,
            store,
            queue,
        })
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_25_mib_push_round_trips_through_sqs_and_s3() {
        let Some(s) = setup().await else { return };
        assert!(s.provider.threshold() < 1024 * 1024, "below the SQS limit");
        round_trip_github_push(&s.provider, &s.queue, &s.objects, &s.store).await;
        s.provider.delete_queue(&s.queue).await.unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_tampered_s3_blob_dead_letters_the_sqs_message() {
        let Some(s) = setup().await else { return };
        let raw = s.provider.inner_provider().clone();
        let reference = send_and_peek(&s.provider, &*raw, &s.queue).await;
        let mut altered = vec![b' '; reference.size as usize];
        altered[0] = b'{';
        let path = Path::from(reference.key.as_str());
        s.objects
            .put(&path, PutPayload::from(altered))
            .await
            .unwrap();
        let got = s
            .provider
            .receive(&s.queue, ReceiveOptions::new(10, Duration::from_secs(2)))
            .await
            .unwrap();
        assert!(got.is_empty(), "the handler never sees it");
        let why = one_dead_letter_reason(&s.provider, &s.queue).await;
        assert_eq!(why, reason::BLOB_ALTERED);
        s.provider.delete_queue(&s.queue).await.unwrap();
    }
}

#[cfg(feature = "azure")]
mod service_bus_azurite {
    use super::*;
    use base64::Engine as _;
    use queue_azure::ServiceBusProvider;
    use queue_claim_check::object_store::azure::MicrosoftAzureBuilder;
    use servicebus_emulator::{Emulator, EmulatorConfig, QueueConfig};

    const ACCOUNT: &str = "devstoreaccount1";
    /// Azurite's published development account key (not a secret).
    const ACCOUNT_KEY: &str =
        "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";
    const VERSION: &str = "2021-08-06";

    /// `Thu, 03 Dec 2026 15:10:59 GMT`.
    fn http_date(at: SystemTime) -> String {
        let secs = at.duration_since(UNIX_EPOCH).unwrap().as_secs();
        let (days, rem) = ((secs / 86_400) as i64, secs % 86_400);
        // Howard Hinnant's civil_from_days.
        let z = days + 719_468;
        let era = z.div_euclid(146_097);
        let doe = z - era * 146_097;
        let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let day = doy - (153 * mp + 2) / 5 + 1;
        let month = if mp < 10 { mp + 3 } else { mp - 9 };
        let year = yoe + era * 400 + i64::from(month <= 2);
        let weekday =
            ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"][days.rem_euclid(7) as usize];
        let months = [
            "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
        ];
        format!(
            "{weekday}, {day:02} {} {year} {:02}:{:02}:{:02} GMT",
            months[(month - 1) as usize],
            rem / 3600,
            (rem / 60) % 60,
            rem % 60
        )
    }

    #[test]
    fn http_dates_are_rfc_1123() {
        assert_eq!(http_date(UNIX_EPOCH), "Thu, 01 Jan 1970 00:00:00 GMT");
        let at = UNIX_EPOCH + Duration::from_secs(1_796_310_659);
        assert_eq!(http_date(at), "Thu, 03 Dec 2026 15:10:59 GMT");
    }

    /// Creates the container with a SharedKey-signed `PUT ?restype=container` (object_store
    /// reads and writes blobs but does not create containers; deployments create them with
    /// their infrastructure).
    async fn create_container(endpoint: &str, container: &str) {
        let rest = endpoint.trim_start_matches("http://");
        let (host, account_path) = rest.split_once('/').expect("http://host:port/account");
        let path = format!("/{account_path}/{container}");
        let date = http_date(SystemTime::now());
        let to_sign = format!(
            "PUT\n\n\n\n\n\n\n\n\n\n\n\nx-ms-date:{date}\nx-ms-version:{VERSION}\n/{ACCOUNT}{path}\nrestype:container"
        );
        let b64 = base64::engine::general_purpose::STANDARD;
        let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &b64.decode(ACCOUNT_KEY).unwrap());
        let signature = b64.encode(ring::hmac::sign(&key, to_sign.as_bytes()).as_ref());
        let head = format!(
            "PUT {path}?restype=container HTTP/1.1\r\nHost: {host}\r\nx-ms-date: {date}\r\nx-ms-version: {VERSION}\r\nAuthorization: SharedKey {ACCOUNT}:{signature}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        );
        assert_eq!(http(host, &head).await, 201, "container created");
    }

    async fn azure_store() -> Option<(Arc<dyn ObjectStore>, BlobStore)> {
        let endpoint = server_env("QUEUE_TEST_AZURITE_BLOB_ENDPOINT", "Azurite")?;
        let container = unique("claims");
        create_container(&endpoint, &container).await;
        let azure = MicrosoftAzureBuilder::new()
            .with_account(ACCOUNT)
            .with_access_key(ACCOUNT_KEY)
            .with_endpoint(endpoint)
            .with_allow_http(true)
            .with_container_name(container)
            .build()
            .expect("Azure store");
        let objects: Arc<dyn ObjectStore> = Arc::new(azure);
        Some((objects.clone(), BlobStore::new(objects)))
    }

    async fn emulator(queue: &QueueName) -> Emulator {
        let config = EmulatorConfig::new()
            .with_key("RootManageSharedAccessKey", "claim-check-test-key")
            .with_queue(
                queue.as_str(),
                QueueConfig::new().with_max_delivery_count(5),
            );
        Emulator::start_tls(config).await.expect("emulator")
    }

    fn service_bus(emu: &Emulator) -> ServiceBusProvider {
        ServiceBusProvider::builder()
            .with_connection_string(&emu.tls_connection_string(true).unwrap())
            .dangerous_add_test_root_certificate(emu.ca_pem().unwrap().as_bytes())
            .build()
            .expect("Service Bus provider")
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_25_mib_push_round_trips_through_service_bus_and_azure_blob() {
        let Some((objects, store)) = azure_store().await else {
            return;
        };
        let queue = QueueName::new("events").unwrap();
        let emu = emulator(&queue).await;
        let provider = ClaimCheck::new(service_bus(&emu), store.clone());
        assert!(
            provider.threshold() < 256 * 1024,
            "below the Standard tier limit"
        );
        round_trip_github_push(&provider, &queue, &objects, &store).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_missing_azure_blob_dead_letters_the_service_bus_message() {
        let Some((objects, store)) = azure_store().await else {
            return;
        };
        let queue = QueueName::new("events").unwrap();
        let emu = emulator(&queue).await;
        let provider = ClaimCheck::new(service_bus(&emu), store.clone());
        let raw = provider.inner_provider().clone();
        let reference = send_and_peek(&provider, &*raw, &queue).await;
        objects
            .delete(&Path::from(reference.key.as_str()))
            .await
            .unwrap();
        assert!(blobs(&objects, &store).await.is_empty());
        let got = provider
            .receive(&queue, ReceiveOptions::new(10, Duration::from_secs(2)))
            .await
            .unwrap();
        assert!(got.is_empty(), "the handler never sees it");
        assert_eq!(
            one_dead_letter_reason(&provider, &queue).await,
            reason::BLOB_MISSING
        );
    }
}
