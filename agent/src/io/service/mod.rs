//! Services as monitored components, on the shell's side: their checks, their OCF agents.
pub mod check;
pub mod ocf;
pub mod supervise;
