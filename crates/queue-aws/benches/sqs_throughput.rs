//! Throughput of the SQS provider against direct `aws-sdk-sqs` calls doing the same work
//! on the same server in the same run, and of batched against unbatched calls.
//!
//! Needs an SQS-compatible server: `QUEUE_TEST_SQS_ENDPOINT=http://127.0.0.1:5000
//! cargo bench -p queue-aws` (moto: `moto_server -H 127.0.0.1 -p 5000`). Without the
//! variable the benchmark prints that it is skipped.
//!
//! Each benchmark moves messages through one queue and drains what it sent, so the queue
//! stays shallow (moto's receive cost grows with queue depth). At the end the mean time
//! per message of each benchmark is printed as ratios: provider / SDK (the provider's
//! overhead) and unbatched / batched (what batching buys).

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use aws_sdk_sqs::types::{DeleteMessageBatchRequestEntry, SendMessageBatchRequestEntry};
use criterion::{Criterion, Throughput};
use queue_aws::{SqsProvider, StaticCredentials};
use queue_core::{Message, QueueName, QueueProvider, QueueSpec, Receipt, ReceiveOptions};

const BODY: &str = "{\"action\":\"opened\",\"number\":42,\"repository\":\"octo/repo\",\"padding\":\"................................................................................................................................................................\"}";
const WAIT: Duration = Duration::from_secs(2);

/// Mean time per message of each benchmark, from the timings criterion asked for.
#[derive(Default, Clone)]
struct Tally(Arc<Mutex<BTreeMap<&'static str, (u64, Duration)>>>);

impl Tally {
    fn record(&self, name: &'static str, messages: u64, took: Duration) {
        let mut map = self.0.lock().unwrap();
        let entry = map.entry(name).or_default();
        entry.0 += messages;
        entry.1 += took;
    }

    fn per_message(&self, name: &str) -> Option<f64> {
        let map = self.0.lock().unwrap();
        map.get(name)
            .filter(|(n, _)| *n > 0)
            .map(|(n, d)| d.as_secs_f64() / *n as f64)
    }
}

struct Setup {
    provider: SqsProvider,
    client: aws_sdk_sqs::Client,
    provider_queue: QueueName,
    sdk_queue_url: String,
    sdk_queue: QueueName,
}

async fn setup(endpoint: &str) -> Setup {
    let region = std::env::var("AWS_REGION").unwrap_or_else(|_| "us-east-1".to_owned());
    let mut builder = SqsProvider::builder()
        .with_endpoint(endpoint)
        .with_region(region.clone());
    if std::env::var_os("AWS_ACCESS_KEY_ID").is_none() {
        builder = builder.with_credentials(StaticCredentials::new("test".into(), "test".into()));
    }
    let provider = builder.build().await.expect("provider");

    let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .region(aws_config::Region::new(region))
        .endpoint_url(endpoint);
    if std::env::var_os("AWS_ACCESS_KEY_ID").is_none() {
        loader = loader.credentials_provider(aws_sdk_sqs::config::Credentials::new(
            "test", "test", None, None, "bench",
        ));
    }
    let client = aws_sdk_sqs::Client::new(&loader.load().await);

    let suffix: String = queue_core::MessageId::random()
        .as_str()
        .chars()
        .filter(char::is_ascii_hexdigit)
        .take(10)
        .collect();
    let spec = QueueSpec::default().with_lock_duration(Duration::from_secs(30));
    let provider_queue = QueueName::new(format!("bench-provider-{suffix}")).unwrap();
    let sdk_queue = QueueName::new(format!("bench-sdk-{suffix}")).unwrap();
    for q in [&provider_queue, &sdk_queue] {
        provider.create_queue(q, &spec).await.expect("create_queue");
    }
    let sdk_queue_url = client
        .get_queue_url()
        .queue_name(sdk_queue.as_str())
        .send()
        .await
        .expect("get_queue_url")
        .queue_url
        .expect("queue url");
    Setup {
        provider,
        client,
        provider_queue,
        sdk_queue_url,
        sdk_queue,
    }
}

/// Provider: send, receive, complete one message at a time, `n` times.
async fn provider_unbatched(p: &SqsProvider, q: &QueueName, n: usize) {
    for _ in 0..n {
        p.send(q, Message::new(BODY)).await.expect("send");
    }
    let mut got = Vec::with_capacity(n);
    while got.len() < n {
        got.extend(
            p.receive(q, ReceiveOptions::new(n - got.len(), WAIT))
                .await
                .expect("receive"),
        );
    }
    for m in &got {
        p.complete(&m.receipt).await.expect("complete");
    }
}

/// Provider: one `send_batch`, receives of up to 10, one `complete_batch`.
async fn provider_batched(p: &SqsProvider, q: &QueueName, n: usize) {
    p.send_batch(q, (0..n).map(|_| Message::new(BODY)).collect())
        .await
        .expect("send_batch");
    let mut receipts: Vec<Receipt> = Vec::with_capacity(n);
    while receipts.len() < n {
        receipts.extend(
            p.receive(q, ReceiveOptions::new(n - receipts.len(), WAIT))
                .await
                .expect("receive")
                .into_iter()
                .map(|m| m.receipt),
        );
    }
    p.complete_batch(&receipts).await.expect("complete_batch");
}

async fn sdk_receive(c: &aws_sdk_sqs::Client, url: &str, n: usize) -> Vec<String> {
    let mut handles = Vec::with_capacity(n);
    while handles.len() < n {
        let out = c
            .receive_message()
            .queue_url(url)
            .max_number_of_messages(i32::try_from((n - handles.len()).min(10)).unwrap())
            .wait_time_seconds(2)
            .send()
            .await
            .expect("receive_message");
        handles.extend(
            out.messages
                .unwrap_or_default()
                .into_iter()
                .filter_map(|m| m.receipt_handle),
        );
    }
    handles
}

/// SDK: `SendMessage`, `ReceiveMessage`, `DeleteMessage` one at a time, `n` times.
async fn sdk_unbatched(c: &aws_sdk_sqs::Client, url: &str, n: usize) {
    for _ in 0..n {
        c.send_message()
            .queue_url(url)
            .message_body(BODY)
            .send()
            .await
            .expect("send_message");
    }
    for h in sdk_receive(c, url, n).await {
        c.delete_message()
            .queue_url(url)
            .receipt_handle(h)
            .send()
            .await
            .expect("delete_message");
    }
}

/// SDK: `SendMessageBatch`, `ReceiveMessage`, `DeleteMessageBatch`.
async fn sdk_batched(c: &aws_sdk_sqs::Client, url: &str, n: usize) {
    let entries = (0..n)
        .map(|i| {
            SendMessageBatchRequestEntry::builder()
                .id(i.to_string())
                .message_body(BODY)
                .build()
                .unwrap()
        })
        .collect();
    c.send_message_batch()
        .queue_url(url)
        .set_entries(Some(entries))
        .send()
        .await
        .expect("send_message_batch");
    let handles = sdk_receive(c, url, n).await;
    let entries = handles
        .into_iter()
        .enumerate()
        .map(|(i, h)| {
            DeleteMessageBatchRequestEntry::builder()
                .id(i.to_string())
                .receipt_handle(h)
                .build()
                .unwrap()
        })
        .collect();
    c.delete_message_batch()
        .queue_url(url)
        .set_entries(Some(entries))
        .send()
        .await
        .expect("delete_message_batch");
}

#[derive(Clone, Copy)]
enum Work {
    ProviderUnbatched,
    ProviderBatched,
    SdkUnbatched,
    SdkBatched,
}

async fn run(work: Work, s: &Setup, n: usize) {
    match work {
        Work::ProviderUnbatched => provider_unbatched(&s.provider, &s.provider_queue, n).await,
        Work::ProviderBatched => provider_batched(&s.provider, &s.provider_queue, n).await,
        Work::SdkUnbatched => sdk_unbatched(&s.client, &s.sdk_queue_url, n).await,
        Work::SdkBatched => sdk_batched(&s.client, &s.sdk_queue_url, n).await,
    }
}

#[allow(clippy::print_stdout)]
fn main() {
    let Ok(endpoint) = std::env::var("QUEUE_TEST_SQS_ENDPOINT") else {
        println!(
            "sqs_throughput skipped: QUEUE_TEST_SQS_ENDPOINT is not set (start `moto_server -H 127.0.0.1 -p 5000` and export QUEUE_TEST_SQS_ENDPOINT=http://127.0.0.1:5000)"
        );
        return;
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let s = Arc::new(rt.block_on(setup(&endpoint)));
    let tally = Tally::default();
    let mut c = Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_secs(2))
        .measurement_time(Duration::from_secs(15))
        .configure_from_args();

    for (group_name, n, works) in [
        (
            "single",
            1usize,
            &[
                ("provider", "single/provider", Work::ProviderUnbatched),
                ("sdk", "single/sdk", Work::SdkUnbatched),
            ][..],
        ),
        (
            "ten",
            10usize,
            &[
                (
                    "provider_unbatched",
                    "ten/provider_unbatched",
                    Work::ProviderUnbatched,
                ),
                (
                    "provider_batched",
                    "ten/provider_batched",
                    Work::ProviderBatched,
                ),
                ("sdk_unbatched", "ten/sdk_unbatched", Work::SdkUnbatched),
                ("sdk_batched", "ten/sdk_batched", Work::SdkBatched),
            ][..],
        ),
    ] {
        let mut group = c.benchmark_group(format!("sqs_send_receive_complete_{group_name}"));
        group.throughput(Throughput::Elements(n as u64));
        for &(name, label, work) in works {
            group.bench_function(name, |b| {
                b.to_async(&rt).iter_custom(|iters| {
                    let s = s.clone();
                    let tally = tally.clone();
                    async move {
                        let start = Instant::now();
                        for _ in 0..iters {
                            run(work, &s, n).await;
                        }
                        let took = start.elapsed();
                        tally.record(label, iters * n as u64, took);
                        took
                    }
                })
            });
        }
        group.finish();
    }
    c.final_summary();

    let ratio = |a: &str, b: &str| match (tally.per_message(a), tally.per_message(b)) {
        (Some(x), Some(y)) if y > 0.0 => format!("{:.2}", x / y),
        _ => "n/a (filtered out)".to_owned(),
    };
    println!("\nmean time per message, ratios in this run (lower first term = faster):");
    let names: Vec<&'static str> = tally.0.lock().unwrap().keys().copied().collect();
    for name in names {
        if let Some(t) = tally.per_message(name) {
            println!("  {name:<28} {:>8.2} ms/message", t * 1e3);
        }
    }
    println!(
        "  provider / sdk, one at a time:        {}",
        ratio("single/provider", "single/sdk")
    );
    println!(
        "  provider / sdk, unbatched x10:        {}",
        ratio("ten/provider_unbatched", "ten/sdk_unbatched")
    );
    println!(
        "  provider / sdk, batched x10:          {}",
        ratio("ten/provider_batched", "ten/sdk_batched")
    );
    println!(
        "  provider unbatched / batched:         {}",
        ratio("ten/provider_unbatched", "ten/provider_batched")
    );
    println!(
        "  sdk unbatched / batched:              {}",
        ratio("ten/sdk_unbatched", "ten/sdk_batched")
    );

    rt.block_on(async {
        for q in [&s.provider_queue, &s.sdk_queue] {
            let _ = s.provider.delete_queue(q).await;
        }
    });
}
