//! The shell around the core: sockets, timers, netlink, the gate table, the fence command.
pub mod agent;
pub mod announce;
pub mod control;
pub mod inbox;
pub mod log;
pub mod netlink;
pub mod service;
pub mod status;
pub mod udp;
