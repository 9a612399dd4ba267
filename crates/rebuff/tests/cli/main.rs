//! End-to-end tests of the `rebuff` binary: real processes, temp dirs,
//! real configuration files. One integration binary, one module per surface.

/// The start most daemon tests share: an `ip` pattern and an `ssh` stream
/// tailing `{dir}/input.log` with a `failed` filter on sshd's failed logins
/// (its retry and actions follow in each test's configuration).
macro_rules! ssh_failed_filter {
    () => {
        r"patterns:
  ip:
    type: ip
streams:
  ssh:
    cmd: ['tail', '-n', '+1', '-F', '{dir}/input.log']
    filters:
      failed:
        regex:
          - 'Failed password for \S+ from <ip> port'
"
    };
}

mod config_errors;
mod daemon;
mod dashboards;
mod demo;
mod exporter;
mod exporter_compat;
mod firewall;
mod geoip;
mod geoip_netns;
mod metrics;
#[path = "../support/mmdb_writer.rs"]
mod mmdb_writer;
mod ordering;
mod reload;
mod replay;
mod score;
mod socket;
mod store;
mod tools;
mod tsdb;
mod virtual_streams;

use std::path::{Path, PathBuf};
use std::process::Output;

use assert_cmd::Command;

/// The crate's test fixtures.
pub fn fixture(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(path)
}

pub fn rebuff() -> Command {
    Command::cargo_bin("rebuff").expect("the rebuff binary is built")
}

/// `rebuff test-config -c PATH`, run to the end.
pub fn test_config(path: impl AsRef<Path>) -> Output {
    rebuff()
        .args(["test-config", "-c"])
        .arg(path.as_ref())
        .output()
        .expect("runs")
}

pub fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

pub fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// A configuration written into a fresh temporary directory.
#[derive(Debug)]
pub struct TempConfig {
    pub dir: tempfile::TempDir,
    pub path: PathBuf,
}

pub fn write_config(name: &str, text: &str) -> TempConfig {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join(name);
    std::fs::write(&path, text).expect("write config");
    TempConfig { dir, path }
}
