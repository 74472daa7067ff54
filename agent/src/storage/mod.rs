//! The shared storage area (docs/design.md, "shared storage"): a small fixed layout on a block
//! device or file that every node reaches, holding each node's disk heartbeat, its orders to
//! other nodes (the poison pill), the resources it claims with their epochs, its services'
//! handoff records and its journal. Every record is checksummed and generation-numbered
//! (`record`), kept in two copies (`layout`), read and written whole blocks at a time past
//! the page cache (`device`); `area` puts them together; `admin` formats and inspects.
pub mod admin;
pub mod area;
pub mod device;
pub mod layout;
pub mod payloads;
pub mod record;

pub use area::Area;
pub use device::Device;

#[cfg(test)]
mod tests;
