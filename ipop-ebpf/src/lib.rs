#![no_std]
//! Kernel programs are in the `ipop` binary (src/main.rs); this library target lets the
//! agent declare a build-dependency on this crate so cargo rebuilds it when it changes.
