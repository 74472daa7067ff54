//! takeover: an XDP-accelerated active/standby takeover agent.
//!
//! `dataplane` drives the eBPF gate (the patent's virtual LAN interface manager); `sys` wraps
//! the system calls around it. The binary's command line lives in `main.rs` and `cli/`.
pub mod config;
pub mod core;
pub mod dataplane;
pub mod io;
pub mod storage;
pub mod sys;
