//! Performing what the core decided: gates, announcements, durable epochs, fences,
//! datagrams; then the log. Datagrams are queued per socket and sent at the end, events
//! logged after that (the log is not on a takeover's critical path).
use std::net::SocketAddr;

use anyhow::Result;
use takeover_common::{Action as GateAction, ExitPlan, GateValue};

use super::Shell;
use crate::{
    core::{
        event::resource_name,
        node::{Action, Gate, NodeId, ResId},
    },
    io::{announce, log as agent_log, udp},
};

impl Shell {
    pub(super) fn perform(
        &mut self,
        rt: &tokio::runtime::Runtime,
        poller: &udp::Poller,
        out: &mut [Vec<(SocketAddr, Vec<u8>)>],
    ) -> Result<()> {
        // Gates first, then datagrams, then announcements, then the log: a whole-node
        // takeover of thousands of resources flips every gate before it announces any.
        let (mut events, mut announce) = (Vec::new(), Vec::new());
        while let Some(action) = self.core.poll_action() {
            match action {
                Action::SetGate { res, gate } => self.set_gate(res, gate)?,
                Action::Announce { res } => announce.push(res),
                Action::Persist { epochs } => {
                    let named: Vec<(String, u64)> = epochs
                        .iter()
                        .map(|&(r, e)| (resource_name(&self.core_cfg, r), e))
                        .collect();
                    let ok = match self.epochs.record(named.iter().cloned()) {
                        Ok(()) => true,
                        Err(e) => {
                            log::error!("{e:#}");
                            false
                        }
                    };
                    // With a storage area, the claim goes there too (ownership record and
                    // journal); its thread answers when it is on the device.
                    let pending = ok && self.disk.as_ref().is_some_and(|d| d.claim(named));
                    if !pending {
                        self.core
                            .handle_persisted(self.now(), ok && self.disk.is_none());
                    }
                }
                Action::Fence { peer } => self.start_fence(poller, peer),
                Action::Restart { component } => self.services.restart(component),
                Action::Acquire {
                    res,
                    epoch,
                    takeover,
                } => self.stateful.acquire(res, epoch, takeover),
                Action::Release { res } => self.stateful.release(res),
                Action::Order { peer, id } => match self.disk.as_ref() {
                    Some(d) => d.order(self.core_cfg.nodes[peer].clone(), id),
                    None => log::error!("a fence order without a storage area: ignored"),
                },
                Action::Send {
                    peer,
                    path,
                    bytes,
                    urgent,
                } => self.queue((peer, path, bytes, urgent), out),
                Action::Event(e) => events.push((e, std::time::SystemTime::now())),
            }
        }
        self.send(out);
        for res in announce {
            self.announce(rt, res);
        }
        for (e, at) in &events {
            agent_log::event(&self.core_cfg, e, *at);
        }
        Ok(())
    }

    pub(super) fn repair(&mut self, res: ResId, gate: Gate) -> Result<()> {
        self.set_gate(res, gate)
    }

    fn set_gate(&mut self, res: ResId, gate: Gate) -> Result<()> {
        if let Some(disk) = self.disk.as_mut() {
            disk.dirty = true;
        }
        let value = self.gate_value(res, gate);
        for t in &self.targets[res] {
            self.gates.set(t, value)?;
        }
        Ok(())
    }

    /// The data plane's value for `gate` of resource `res`.
    fn gate_value(&self, res: ResId, gate: Gate) -> GateValue {
        let v = self.unleased_gate_value(res, gate);
        if self.core_cfg.lease {
            // Flagged on Open and Receive only; the data plane ignores it on the others.
            v.leased()
        } else {
            v
        }
    }

    fn unleased_gate_value(&self, res: ResId, gate: Gate) -> GateValue {
        match gate {
            Gate::Open => GateValue::new(GateAction::Open),
            Gate::Closed => GateValue::new(GateAction::Closed),
            // Without the peer's MAC nothing can be forwarded to it, nor told apart from what
            // it forwards: closed is all that is safe.
            Gate::Forward(to) => match self.line_to(res, to) {
                Some((index, peer, mine)) => GateValue::forward(index, peer, mine),
                None => self
                    .peer_mac(to)
                    .map_or(GateValue::new(GateAction::Closed), |m| {
                        GateValue::forward(0, m, self.mac)
                    }),
            },
            Gate::Receive(from) => self
                .peer_mac(from)
                .map_or(GateValue::new(GateAction::Closed), GateValue::receive),
        }
    }

    /// Arms, for each service instance here, what its gate entries become the moment its
    /// process exits (the core's `exit_plan`): the data plane writes them from the exit
    /// tracepoint, before the agent hears. Written only when they change.
    pub(super) fn arm_exit_plans(&mut self) {
        if self.registration.is_none() {
            return;
        }
        for c in 0..self.core_cfg.components.len() {
            let tgid = self.services.pid(c).unwrap_or(0);
            let mut plans = Vec::new();
            if tgid != 0 {
                for &res in &self.component_res[c] {
                    let Some(gate @ Gate::Forward(to)) = self.core.exit_plan(res) else {
                        continue;
                    };
                    // Without the peer's MAC there is nothing to arm (set_gate says so).
                    if self.peer_macs[to].is_none() {
                        continue;
                    }
                    let value = self.gate_value(res, gate);
                    plans.extend(self.targets[res].iter().map(|t| ExitPlan {
                        key: t.key(),
                        value,
                    }));
                }
            }
            if self.exit_armed[c].0 == tgid && self.exit_armed[c].1 == plans {
                continue;
            }
            let (old, _) = std::mem::replace(&mut self.exit_armed[c], (tgid, plans));
            let reg = self.registration.as_mut().expect("checked above");
            if old != 0 && old != tgid {
                let _ = reg.arm_exit(old, &[]);
            }
            if tgid != 0 {
                if let Err(e) = reg.arm_exit(tgid, &self.exit_armed[c].1) {
                    log::warn!("{e:#}: the agent alone acts on this service's exit");
                }
            }
        }
    }

    /// A service handed to peer `to` goes over the dedicated line while its carrier is up
    /// and the peer's MAC there is known (the peer's line has a gate with no entry for it:
    /// it passes); a whole address, and anything when the line is dark, over the LAN.
    fn line_to(&self, res: ResId, to: NodeId) -> Option<(u32, [u8; 6], [u8; 6])> {
        let line = self.line.as_ref()?;
        let service = self.core_cfg.resources[res].service.is_some();
        let peer = self.peer_line_macs.get(to).copied().flatten()?;
        (service && self.line_peers.contains(&to) && !self.core.line_dark(to))
            .then_some((line.index, peer, line.mac))
    }

    /// Writes again the gates of the services handed to a peer (the line changed).
    pub(super) fn refresh_service_forwards(&mut self) -> Result<()> {
        for res in 0..self.core_cfg.resources.len() {
            if self.core_cfg.resources[res].service.is_some() {
                if let gate @ Gate::Forward(_) = self.core.gate(res) {
                    self.set_gate(res, gate)?;
                }
            }
        }
        Ok(())
    }

    /// Peer `p`'s MAC on the LAN, as the runtime thread last read it from the neighbour
    /// table (never looked up here: netlink is no business of the heartbeat loop).
    fn peer_mac(&self, p: NodeId) -> Option<[u8; 6]> {
        let mac = self.peer_macs[p];
        if mac.is_none() {
            log::warn!(
                "no MAC known for {} on the LAN: its gate stays closed instead",
                self.core_cfg.nodes[p]
            );
        }
        mac
    }

    fn announce(&self, rt: &tokio::runtime::Runtime, res: ResId) {
        let (frames, sender, count, interval) = (
            announce::frames(self.core_cfg.resources[res].ip, self.mac),
            self.announcer.clone(),
            self.cfg.announce.count,
            self.cfg.announce.interval,
        );
        let send = move |frames: &[Vec<u8>]| {
            for f in frames {
                if let Err(e) = sender.send(f) {
                    log::warn!("announcement failed: {e}");
                }
            }
        };
        // The first at once, from here: the clients come over as soon as they hear it. The
        // rest from the runtime, at the interval.
        send(&frames);
        if count > 1 {
            rt.spawn(async move {
                for _ in 1..count {
                    tokio::time::sleep(interval).await;
                    send(&frames);
                }
            });
        }
    }

    /// Queues a datagram for its socket: an urgent one leaves from the listen socket for the
    /// peer's wake socket, which wakes it; a periodic one from the wake socket for the peer's
    /// listen socket, which it reads at its next tick, so the peer's kernel's answers (an
    /// exit notice, a probe's answer) come back to a socket that wakes this node.
    pub(super) fn queue(
        &self,
        (peer, path, bytes, urgent): (NodeId, usize, Vec<u8>, bool),
        out: &mut [Vec<(SocketAddr, Vec<u8>)>],
    ) {
        let listen = self.peer_paths[peer][path];
        if urgent {
            out[path].push((self.peer_wake[peer][path].unwrap_or(listen), bytes));
        } else {
            out[self.listen.len() + path].push((listen, bytes));
        }
    }

    /// Sends what `queue` queued: one `sendmmsg` per socket.
    pub(super) fn send(&self, out: &mut [Vec<(SocketAddr, Vec<u8>)>]) {
        for (sock, queued) in self.listen.iter().chain(&self.wake).zip(out.iter_mut()) {
            if !queued.is_empty() {
                udp::send_all(sock, queued);
                queued.clear();
            }
        }
    }
}
