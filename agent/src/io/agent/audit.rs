//! The gate table against the core (one writer, docs/design.md "only the agent writes the
//! gate table"): now and then the agent reads every entry back, and an entry that says something
//! else than the core holds (changed behind the agent, e.g. by hand) is reported and
//! written again. A slice at a time, so that the heartbeat loop is never held up.
use std::time::Duration;

use anyhow::Result;
use takeover_common::Action as GateAction;

use super::Shell;
use crate::core::{event::resource_name, node::Gate};

/// How often a slice of the table is read back, and how many entries a slice has: a few
/// dozen map reads on the heartbeat thread at a time, the whole table within seconds even
/// with thousands of resources.
pub const EVERY: Duration = Duration::from_millis(100);
const SLICE: usize = 64;

/// The data plane's state word for what the core holds (forward and receive fall back to
/// closed without the peer's MAC, which is no difference).
fn expected(gate: Gate) -> GateAction {
    match gate {
        Gate::Open => GateAction::Open,
        Gate::Closed => GateAction::Closed,
        Gate::Forward(_) => GateAction::Forward,
        Gate::Receive(_) => GateAction::Receive,
    }
}

impl Shell {
    pub(super) fn audit(&mut self) -> Result<()> {
        let n = self.targets.len();
        let start = self.audit_next % n.max(1);
        self.audit_next = start + SLICE.min(n);
        for r in (start..start + SLICE.min(n)).map(|i| i % n) {
            let gate = self.core.gate(r);
            let want = expected(gate);
            // A service's entries are written together: the first stands for them all.
            let found = self.gates.get(&self.targets[r][0])?.and_then(|e| e.action);
            // A forward or receive written as closed for want of the peer's MAC: written
            // again once the MAC is known, quietly (it was said when it happened).
            let peer = match gate {
                Gate::Forward(p) | Gate::Receive(p) => Some(p),
                _ => None,
            };
            if found == Some(GateAction::Closed) && peer.is_some() {
                if peer.is_some_and(|p| self.peer_macs[p].is_some()) {
                    self.repair(r, gate)?;
                }
                continue;
            }
            if found == Some(want) {
                continue;
            }
            // A service's exit plan written by the data plane at its process's exit: the
            // core hears of the exit within the next wake-up and holds the same.
            if found == Some(GateAction::Forward)
                && gate == Gate::Open
                && self.core.exit_plan(r).is_some()
            {
                continue;
            }
            log::warn!(
                "gate of {} was changed behind the agent (found {}, the agent holds {}): written again",
                resource_name(&self.core_cfg, r),
                found.map_or("no entry", GateAction::name),
                gate.describe(&self.core_cfg)
            );
            self.repair(r, gate)?;
        }
        Ok(())
    }
}
