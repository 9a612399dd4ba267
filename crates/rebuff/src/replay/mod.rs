//! The offline decision pipeline over old logs, in log time.

pub mod timestamp;
