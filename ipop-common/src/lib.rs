//! Types and wire formats shared by the kernel programs (`ipop-ebpf`) and the agent.
//!
//! Everything here is `#![no_std]` so the eBPF side can use it; the map types are
//! `#[repr(C)]` without padding so they cross the kernel boundary byte for byte.
#![no_std]

pub mod arp;
pub mod maps;
pub mod nd;
