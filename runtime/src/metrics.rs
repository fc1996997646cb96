//! Metrics of a process over HTTP, in the Prometheus (OpenMetrics) text format.
//!
//! Every part of a process registers what it measures in one [`registry`] (prometheus-client's); with
//! `--metrics-addr HOST:PORT` ([`ClusterArgs`](crate::ClusterArgs)) [`execute`](crate::execute) serves it at
//! `http://HOST:PORT/metrics` for as long as the process runs. The metrics and their labels are listed in
//! docs/metrics.md.

use std::net::SocketAddr;
use std::sync::{Mutex, OnceLock};

use prometheus_client::registry::Registry;

use crate::error::{Error, Result};

/// The process's metrics registry (a collector registered here is encoded on every scrape).
pub fn registry() -> &'static Mutex<Registry> {
    static REGISTRY: OnceLock<Mutex<Registry>> = OnceLock::new();
    REGISTRY.get_or_init(|| Mutex::new(Registry::default()))
}

/// The registry's contents in the text format, as a scrape gets them.
pub fn encode() -> String {
    let mut text = String::new();
    let registry = registry().lock().unwrap_or_else(|e| e.into_inner());
    if let Err(e) = prometheus_client::encoding::text::encode(&mut text, &registry) {
        tracing::warn!("cannot encode the metrics: {e}");
    }
    text
}

/// Serves the registry at `http://addr/metrics` from a background thread; returns the address it listens on
/// (port 0 picks a free one).
pub fn serve(addr: SocketAddr) -> Result<SocketAddr> {
    let server = tiny_http::Server::http(addr)
        .map_err(|e| Error::Options(format!("--metrics-addr {addr}: cannot listen there ({e}); give a free host:port")))?;
    let bound = server.server_addr().to_ip().unwrap_or(addr);
    std::thread::Builder::new()
        .name("tributary:metrics".into())
        .spawn(move || {
            for request in server.incoming_requests() {
                let response = if request.url() == "/metrics" || request.url().starts_with("/metrics?") {
                    let content_type = "application/openmetrics-text; version=1.0.0; charset=utf-8";
                    let header = tiny_http::Header::from_bytes("Content-Type", content_type).ok();
                    let mut response = tiny_http::Response::from_string(encode());
                    if let Some(header) = header {
                        response = response.with_header(header);
                    }
                    response
                } else {
                    tiny_http::Response::from_string("metrics are at /metrics\n").with_status_code(404)
                };
                if let Err(e) = request.respond(response) {
                    tracing::debug!("a metrics scrape went away: {e}");
                }
            }
        })
        .map_err(|source| Error::Io { what: "cannot start the metrics thread".into(), source })?;
    tracing::info!("metrics at http://{bound}/metrics");
    Ok(bound)
}
