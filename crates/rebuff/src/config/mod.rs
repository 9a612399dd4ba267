//! Configuration: source files -> positioned tree -> validated, compiled config.

pub mod json;
pub mod jsonnet;
pub mod tree;
pub mod yaml;
