//! Placeholder until the endpoint lands.
#![allow(dead_code, unused_variables)]
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Prometheus,
    OpenMetrics,
}
pub type RenderFuture =
    std::pin::Pin<Box<dyn std::future::Future<Output = anyhow::Result<Vec<u8>>> + Send>>;
#[allow(missing_debug_implementations)]
pub struct Endpoint {
    pub render: Arc<dyn Fn(Format) -> RenderFuture + Send + Sync>,
    pub ready: Arc<AtomicBool>,
    pub web: Option<super::webconfig::WebConfig>,
}
pub async fn bind(listen: &str) -> anyhow::Result<tokio::net::TcpListener> {
    Ok(tokio::net::TcpListener::bind(listen).await?)
}
pub async fn run(
    listener: tokio::net::TcpListener,
    endpoint: Endpoint,
    shutdown: tokio_util::sync::CancellationToken,
) {
}
