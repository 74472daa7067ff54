//! Services as monitored components, on the shell's side: their checks, their OCF agents, cold services' file systems.
pub mod check;
pub mod filesystem;
pub mod ocf;
pub mod supervise;
