//! The agent's side of the data plane: the embedded eBPF object, where its pieces are pinned,
//! attaching it to an interface, and reading and writing its gate table.
pub mod attach;
pub mod cleanup;
pub mod gates;
pub mod heard;
pub mod lease;
pub mod liveness;
pub mod pinned_link;
pub mod pins;
pub mod stale;
pub mod target;
mod upgrade;

/// The compiled gate programs (`ebpf/gate`), built by `build.rs` and shipped inside the binary.
pub static OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/takeover-gate.o"));

pub use attach::{attach, detach, AttachMode, Attached, Egress, XdpAttach};
pub use gates::{Entry, Gates};
pub use pins::PinDir;
pub use target::{Service, Target};
