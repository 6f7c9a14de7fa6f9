//! Building the SDK client from [`SqsBuilder`].
//!
//! Retries: the SDK makes **one attempt** per call unless `with_max_attempts` asks for more.
//! Retrying is the job of the `Retrying` layer (`queue_core::layer`), which every provider
//! built from configuration sits behind (`queue_runtime::build_provider`), so a transient
//! failure is retried the same way on SQS, Service Bus and memory: class-aware, bounded in
//! attempts and time, jittered, counted in one metric (docs/adr/0007-provider-layers.md).
//! A retried `SendMessage` carries the same message id and, on FIFO queues, the same
//! `MessageDeduplicationId`, so SQS drops a copy whose first attempt did land. With
//! `with_max_attempts(n)`, the SDK's standard strategy retries too (throttling, HTTP
//! 500/502/503/504, timeouts of one attempt, connection errors), within `operation_timeout`.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, RwLock},
};

use aws_sdk_sqs::Client;
use queue_core::{QueueError, Result};

use super::{Inner, SqsProvider, receipts::InFlight};
use crate::builder::{SqsBuilder, validate_endpoint};

impl SqsProvider {
    pub(crate) async fn connect(config: SqsBuilder) -> Result<Self> {
        config.validate()?;
        let sdk = load_sdk_config(&config).await;
        if sdk.region().is_none() {
            return Err(QueueError::config(
                "sqs.region",
                "no region configured and none found in the environment or AWS profile",
            ));
        }
        let endpoint = match &config.endpoint {
            Some(e) => Some(e.clone()),
            None => endpoint_from_environment(&sdk)?,
        };
        let mut builder = aws_sdk_sqs::config::Builder::from(&sdk);
        if let Some(e) = &endpoint {
            builder = builder.endpoint_url(e.clone());
        }
        let client = Client::from_conf(builder.build());
        Ok(Self {
            inner: Arc::new(Inner {
                client,
                region: sdk.region().map(|r| r.to_string()),
                endpoint,
                content_dedup: config.content_based_deduplication,
                timeout: config.operation_timeout,
                queues: RwLock::new(HashMap::new()),
                inflight: Mutex::new(InFlight::default()),
            }),
        })
    }
}

/// The AWS configuration chain with our region, profile, credentials, timeout and
/// retry settings on top.
async fn load_sdk_config(config: &SqsBuilder) -> aws_config::SdkConfig {
    let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest());
    if let Some(region) = &config.region {
        loader = loader.region(aws_config::Region::new(region.clone()));
    }
    if let Some(profile) = &config.profile {
        loader = loader.profile_name(profile);
    }
    if let Some(creds) = &config.credentials {
        loader = loader.credentials_provider(creds.to_sdk());
    }
    loader = loader.timeout_config(
        aws_config::timeout::TimeoutConfig::builder()
            .operation_timeout(config.operation_timeout)
            .build(),
    );
    let retry = match config.max_attempts {
        Some(attempts) => aws_config::retry::RetryConfig::standard().with_max_attempts(attempts),
        None => aws_config::retry::RetryConfig::disabled(),
    };
    loader = loader.retry_config(retry);
    loader.load().await
}

/// An endpoint from `AWS_ENDPOINT_URL(_SQS)` or a profile: the plaintext rule applies to it
/// just the same as to a configured one.
fn endpoint_from_environment(sdk: &aws_config::SdkConfig) -> Result<Option<String>> {
    let key = aws_types::service_config::ServiceConfigKey::builder()
        .service_id("SQS")
        .env("AWS_ENDPOINT_URL")
        .profile("endpoint_url")
        .build()
        .map_err(|e| QueueError::config("sqs.endpoint", e.to_string()))?;
    let configured = sdk
        .service_config()
        .and_then(|c| c.load_config(key))
        .or_else(|| sdk.endpoint_url().map(str::to_owned));
    if let Some(e) = &configured {
        validate_endpoint(
            "AWS_ENDPOINT_URL_SQS / AWS_ENDPOINT_URL / profile endpoint_url",
            e,
        )?;
    }
    Ok(configured)
}
