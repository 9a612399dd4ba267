//! rebuff: a fast, observable, reaction-compatible log-watching ban daemon.
//!
//! # Layout
//!
//! - [`cli`]: the command line (clap).
//! - [`check`]: `test-config` and `test-regex`.
//! - [`config`]: reads YAML, JSON and JSONnet (a file or a directory) into a
//!   positioned tree, validates it and compiles it into engine types.
//! - [`lines`]: bounded line reading from plain or gzip'ed input.
//! - [`replay`]: the offline decision pipeline over old logs, in log time.
//! - [`score`]: `rebuff score`, the drop-in for the seed score daemon.
//! - [`progress`]: the progress bar `replay` draws on a terminal.
//! - [`daemon`]: `rebuff start`: wires the tasks below, start and stop order.
//! - [`stream`]: stream children, merged output, matching where lines are read.
//! - [`tracker`]: the one owner of windows, jails, timers and the store handle.
//! - [`store`]: the persisted state, an append-only log with group commit.
//! - [`exec`]: actions and start/stop commands as argv children, with a
//!   concurrency limit and timeouts.
//! - [`firewall`]: reaction's `nftables` and `ipset` action types: one
//!   batching writer of kernel sets, setup, restore and reconcile.
//! - [`control`]: the Unix socket protocol, server and client of
//!   `show`/`flush`/`trigger`/`reload`.
//! - [`log`]: the `LEVEL message` log on stdout and the reaction-compatible
//!   event lines.
//! - [`metrics`]: every counter, the exporter-compatible families, label
//!   templates and the `/metrics` endpoint.
//! - [`geo`]: GeoIP: a hardened MMDB reader, the country of an address
//!   (pattern rules, `<country>`, reports), TCP connections by remote
//!   country at scrape time.
//! - [`notify`]: systemd readiness, status and watchdog.
//! - [`exporter`]: `rebuff exporter`, reaction-metrics-exporter for an
//!   upstream reaction (its own log reader, counts and endpoint).
//! - [`events`]: the shared vocabulary (matches, action outcomes, command
//!   kinds, finished reports, times) every layer uses; it imports no other
//!   module of this crate.
//!
//! Dependencies point down: the CLI (`main`, [`cli`], [`check`],
//! [`replay`], [`control::client`]) on top, then the runtime ([`daemon`],
//! [`stream`], [`tracker`], [`exec`], [`firewall`], [`control::server`]), then
//! [`metrics`], [`geo`], [`log`] and [`store`], then [`events`], [`config`] and the
//! engine.

pub mod check;
pub mod cli;
pub mod config;
pub mod control;
pub mod daemon;
pub mod events;
pub mod exec;
pub mod exporter;
pub mod firewall;
pub mod geo;
pub mod lines;
pub mod log;
pub mod metrics;
pub mod notify;
pub mod progress;
pub mod replay;
pub mod score;
pub mod store;
pub mod stream;
pub mod tracker;
