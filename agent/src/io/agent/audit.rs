//! The gate table against the core (one writer, DESIGN.md "only the control plane writes
//! maps"): now and then the agent reads every entry back, and an entry that says something
//! else than the core holds (changed behind the agent, e.g. by hand) is reported and
//! written again.
use std::time::Duration;

use anyhow::Result;
use takeover_common::Action as GateAction;

use super::Shell;
use crate::core::{event::resource_name, node::Gate};

/// How often the table is read back.
pub const EVERY: Duration = Duration::from_secs(2);

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
        for r in 0..self.targets.len() {
            let gate = self.core.gate(r);
            let want = expected(gate);
            let found = self.gates.get(&self.targets[r])?.and_then(|e| e.action);
            let fine = found == Some(want)
                || (found == Some(GateAction::Closed)
                    && matches!(gate, Gate::Forward(_) | Gate::Receive(_)));
            if fine {
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
