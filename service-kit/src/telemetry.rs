//! Logs and traces: `tracing` with an env filter (`RUST_LOG`), text or JSON on stderr, and OTLP
//! trace export (http/protobuf) when `OTEL_EXPORTER_OTLP_ENDPOINT` is set. W3C `traceparent`
//! from incoming gRPC metadata becomes the parent of the request span.

use opentelemetry::propagation::Extractor;
use opentelemetry::trace::{TraceContextExt, TracerProvider as _};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// Flushes and stops trace export when dropped (at the end of `main`).
pub struct TelemetryGuard {
    provider: Option<SdkTracerProvider>,
}

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        if let Some(provider) = self.provider.take()
            && let Err(error) = provider.shutdown()
        {
            eprintln!("trace export shutdown failed: {error}");
        }
    }
}

/// Installs the global subscriber. `service_name` is the default for `OTEL_SERVICE_NAME`.
pub fn init(service_name: &str, format: LogFormat) -> anyhow::Result<TelemetryGuard> {
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let otlp_enabled = std::env::var_os("OTEL_EXPORTER_OTLP_ENDPOINT").is_some_and(|v| !v.is_empty())
        && std::env::var("OTEL_SDK_DISABLED").map(|v| v != "true").unwrap_or(true);
    let provider = if otlp_enabled {
        // http/protobuf over blocking reqwest, exported from the batch processor's own thread:
        // it works whatever the async runtime is doing.
        let exporter = opentelemetry_otlp::SpanExporter::builder().with_http().build()?;
        let name = std::env::var("OTEL_SERVICE_NAME").unwrap_or_else(|_| service_name.to_owned());
        let resource = opentelemetry_sdk::Resource::builder().with_service_name(name).build();
        Some(SdkTracerProvider::builder().with_batch_exporter(exporter).with_resource(resource).build())
    } else {
        None
    };
    let otel_layer = provider
        .as_ref()
        .map(|provider| tracing_opentelemetry::layer().with_tracer(provider.tracer(service_name.to_owned())));
    let registry = tracing_subscriber::registry().with(filter).with(otel_layer);
    match format {
        LogFormat::Text => registry.with(tracing_subscriber::fmt::layer().with_writer(std::io::stderr)).try_init()?,
        LogFormat::Json => registry
            .with(tracing_subscriber::fmt::layer().json().with_current_span(true).with_writer(std::io::stderr))
            .try_init()?,
    }
    Ok(TelemetryGuard { provider })
}

struct HeaderExtractor<'a>(&'a http::HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|k| k.as_str()).collect()
    }
}

/// The span for one incoming gRPC request, child of the caller's `traceparent` if any.
/// Request metadata is not recorded: it carries tokens.
pub fn grpc_request_span(request: &http::Request<()>) -> tracing::Span {
    let parent = opentelemetry::global::get_text_map_propagator(|p| p.extract(&HeaderExtractor(request.headers())));
    let remote = parent.span().span_context().clone();
    let trace_id = if remote.is_valid() { remote.trace_id().to_string() } else { String::new() };
    let span = tracing::info_span!(
        "grpc",
        otel.name = %request.uri().path().trim_start_matches('/'),
        otel.kind = "server",
        rpc.system = "grpc",
        trace_id = %trace_id,
    );
    if remote.is_valid() {
        // Without an OTLP layer this is a no-op; the trace id above still reaches the logs.
        let _ = span.set_parent(parent);
    }
    span
}
