//! The tracer provider: the SDK's batch span processor (its own thread, bounded queue of
//! 2048 spans) over an exporter that hands each batch to the tokio runtime's OTLP transport
//! and waits for the result on a channel, so no blocking call runs on a runtime thread and
//! the processor's thread never needs a runtime of its own. Installed as the global tracer
//! provider, so `opentelemetry::global::tracer("gravity-exporter")` spans are exported.
//!
//! The exporter's own slow operations (a collector cycle, a probe round, a consistency
//! pass longer than `--otlp.slow-threshold`) become spans with their outcome
//! ([`slow_operation`]); with OTLP off that is one atomic load.
#![warn(clippy::arithmetic_side_effects)]

use std::sync::Arc;

use opentelemetry::KeyValue;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::transform::common::tonic::ResourceAttributesWithSchema;
use opentelemetry_proto::transform::trace::tonic::group_spans_by_resource_and_scope;
use opentelemetry_sdk::error::{OTelSdkError, OTelSdkResult};
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider, SpanData, SpanExporter};

use super::transport::{Payload, Signal, Transport};
use super::Outcomes;
use crate::collector::Context;
use crate::config::otlp::{OtlpSettings, ParentRoot, SamplerSetting};

struct Exporter {
    transport: Arc<Transport>,
    outcomes: Arc<Outcomes>,
    handle: tokio::runtime::Handle,
    resource: ResourceAttributesWithSchema,
}

impl std::fmt::Debug for Exporter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Exporter").finish_non_exhaustive()
    }
}

impl SpanExporter for Exporter {
    fn export(
        &self,
        batch: Vec<SpanData>,
    ) -> impl std::future::Future<Output = OTelSdkResult> + Send {
        let n = u64::try_from(batch.len()).unwrap_or(u64::MAX);
        let req = ExportTraceServiceRequest {
            resource_spans: group_spans_by_resource_and_scope(batch, &self.resource),
        };
        let (tx, rx) = tokio::sync::oneshot::channel();
        let transport = Arc::clone(&self.transport);
        let outcomes = Arc::clone(&self.outcomes);
        // the send runs on the runtime; this thread (the batch processor's) only waits
        self.handle.spawn(async move {
            let r = transport.send(Payload::Traces(req)).await;
            outcomes.record(Signal::Traces, &r, n);
            let _ = tx.send(r.map_err(|e| e.to_string()));
        });
        async move {
            match rx.await {
                Ok(Ok(())) => Ok(()),
                Ok(Err(e)) => Err(OTelSdkError::InternalFailure(e)),
                Err(_) => Err(OTelSdkError::InternalFailure(
                    "the runtime stopped before the export ended".into(),
                )),
            }
        }
    }

    fn set_resource(&mut self, resource: &opentelemetry_sdk::Resource) {
        self.resource = resource.into();
    }
}

fn sampler(s: SamplerSetting) -> Sampler {
    match s {
        SamplerSetting::AlwaysOn => Sampler::AlwaysOn,
        SamplerSetting::AlwaysOff => Sampler::AlwaysOff,
        SamplerSetting::Ratio(r) => Sampler::TraceIdRatioBased(r),
        SamplerSetting::ParentBased(root) => Sampler::ParentBased(Box::new(match root {
            ParentRoot::AlwaysOn => Sampler::AlwaysOn,
            ParentRoot::AlwaysOff => Sampler::AlwaysOff,
            ParentRoot::Ratio(r) => Sampler::TraceIdRatioBased(r),
        })),
    }
}

/// Builds the tracer provider on the OTLP settings and installs it as the global one.
/// Must run inside the tokio runtime.
pub fn install(
    ctx: &Context,
    o: &OtlpSettings,
    transport: Arc<Transport>,
    outcomes: Arc<Outcomes>,
) -> SdkTracerProvider {
    let pipeline = ctx.target().pipeline.clone();
    let attrs = super::resource_attributes(&pipeline, ctx.settings().listen.port(), &|k| {
        std::env::var(k).ok()
    });
    let resource = opentelemetry_sdk::Resource::builder_empty()
        .with_attributes(attrs.into_iter().map(|(k, v)| KeyValue::new(k, v)))
        .build();
    let exporter = Exporter {
        transport,
        outcomes,
        handle: tokio::runtime::Handle::current(),
        resource: (&resource).into(),
    };
    let processor = opentelemetry_sdk::trace::BatchSpanProcessor::builder(exporter).build();
    let provider = SdkTracerProvider::builder()
        .with_span_processor(processor)
        .with_sampler(sampler(o.sampler))
        .with_resource(resource)
        .build();
    opentelemetry::global::set_tracer_provider(provider.clone());
    crate::spans::set_slow_threshold(Some(o.slow_threshold));
    provider
}

/// Stops the slow-operation spans and puts a no-op provider in place of the global one.
pub fn uninstall() {
    crate::spans::set_slow_threshold(None);
    opentelemetry::global::set_tracer_provider(
        opentelemetry::trace::noop::NoopTracerProvider::new(),
    );
}
