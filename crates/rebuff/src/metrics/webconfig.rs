//! Placeholder.
#[derive(Debug)]
pub struct WebConfig;
impl WebConfig {
    pub fn load(path: &std::path::Path) -> anyhow::Result<WebConfig> {
        let _ = path;
        Ok(WebConfig)
    }
}
impl WebConfig {
    pub fn tls_acceptor(&self) -> Option<()> {
        None
    }
}
