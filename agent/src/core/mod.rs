//! The sans-IO core: pure logic with no sockets, clocks or maps, so every failure story can
//! be tested with virtual time. The shell around it performs what it decides.
pub mod component;
pub mod config;
pub mod event;
pub mod node;
#[cfg(test)]
pub(crate) mod sim;
pub mod wire;
