//! The lab (crate ipop-lab) under the names these tests use, and the agent binary cargo built
//! for them (the lab finds the same file beside the test executable).

#![allow(dead_code, unused_imports)] // each test binary uses its own share

pub use ipop_lab::*;

pub const AGENT: &str = env!("CARGO_BIN_EXE_ipop-agent");
