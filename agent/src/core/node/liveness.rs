//! Who is alive: deadlines per peer, the dark-line confirmation by probes (per peer and
//! path), the kernel's exit notices, late wake-ups, and lost paths.
use std::time::Duration;

use super::{Action, Core, DeathReason, Event, FenceState, NodeId};
use crate::core::wire::{self, Rejected};

impl Core {
    /// Probes go to a peer's data plane on the LAN while its dark line may still be the first
    /// sign of a crash: from the carrier drop until the short confirmation can no longer apply;
    /// and to a dead peer that is still to be proven gone, whose kernel's answers prove that
    /// its agent is stuck, not cut off (`lease`).
    fn probing_peer(&self, p: NodeId, now: Duration) -> bool {
        let peer = &self.peers[p];
        if !peer.alive {
            return peer.kernel_since.is_none() && self.awaits_proof(p);
        }
        peer.dark_since.is_some_and(|d| {
            now < d + self.cfg.dead_after(self.cfg.misses) + self.cfg.probe_confirm
        })
    }

    pub(super) fn probing(&self, now: Duration) -> bool {
        self.others().any(|p| self.probing_peer(p, now))
    }

    /// The short deadline for peer `p`, if it applies: its line went dark and it fell silent
    /// on the LAN (agent and kernel) within the dead time of that, as a crash does. A peer
    /// heard well after its line went dark is alive with one path lost; from then on only the
    /// whole dead time counts (a LAN stall must not become a takeover, invariant 5).
    pub(super) fn confirm_deadline(&self, p: NodeId) -> Option<Duration> {
        let peer = &self.peers[p];
        let dark = peer.dark_since?;
        let last = *peer.last_heard.iter().flatten().max()?;
        let evidence = last
            .max(peer.probe_answered.unwrap_or_default())
            .max(peer.confirm_from);
        (evidence < dark + self.cfg.dead_after(self.cfg.misses))
            .then(|| evidence + self.cfg.probe_confirm)
    }

    /// When peer `p` will be declared dead if nothing more is heard.
    pub(super) fn death_deadline(&self, p: NodeId) -> Option<Duration> {
        let peer = &self.peers[p];
        if !peer.alive {
            return None;
        }
        let last = *peer.last_heard.iter().flatten().max()?;
        // A live kernel is not a live server: an agent silent for the whole dead time is dead
        // even if its kernel answers probes.
        let silent = last + self.cfg.dead_after(self.cfg.misses);
        let deadline = self.confirm_deadline(p).map_or(silent, |c| c.min(silent));
        Some(peer.restart_until.map_or(deadline, |r| r.max(deadline)))
    }

    pub(super) fn check_deaths(&mut self, now: Duration) {
        for p in self.others_vec() {
            if self.death_deadline(p).is_some_and(|d| now >= d) {
                let reason = if self.peers[p].restart_until.is_some_and(|r| now >= r) {
                    DeathReason::RestartTimedOut
                } else if self.confirm_deadline(p).is_some_and(|d| now >= d) {
                    DeathReason::LineDarkLanSilent
                } else {
                    DeathReason::Silent
                };
                self.declare_dead(now, p, reason);
            }
        }
    }

    /// Silence on one path for this long, while the peer lives, is reported: twice the dead
    /// time, so that a crash (every path silent) is a death, not first a lost path.
    fn path_loss_after(&self) -> Duration {
        self.cfg.dead_after(self.cfg.misses) * 2
    }

    /// When a path to live peer `p` reported working will be reported lost.
    pub(super) fn path_loss_deadline(&self, p: NodeId) -> Option<Duration> {
        let peer = &self.peers[p];
        if !peer.alive || self.cfg.paths < 2 {
            return None;
        }
        (0..self.cfg.paths)
            .filter(|&i| peer.path_up[i])
            .filter_map(|i| peer.last_heard[i].max(peer.since))
            .map(|t| t + self.path_loss_after())
            .min()
    }

    /// Reports the paths to live peers that have been silent for the dead time (the peer
    /// lives: another path carries it).
    pub(super) fn check_paths(&mut self, now: Duration) {
        if self.cfg.paths < 2 {
            return;
        }
        let dead = self.path_loss_after();
        for p in self.others_vec() {
            if !self.peers[p].alive {
                continue;
            }
            for path in 0..self.cfg.paths {
                let peer = &mut self.peers[p];
                // Counted from when it came alive for a path not heard since.
                let silent = peer.last_heard[path]
                    .max(peer.since)
                    .is_none_or(|t| now >= t + dead);
                if peer.path_up[path] && silent {
                    peer.path_up[path] = false;
                    self.event(Event::PathLost { peer: p, path });
                }
            }
        }
    }

    /// This node runs at `now`. A detector that woke late does not count the silence it
    /// slept through: credit the peers with the time this node was not running.
    pub(super) fn awake(&mut self, now: Duration) {
        if let Some(last) = self.last_awake {
            let slept = now.saturating_sub(last);
            if slept > self.cfg.interval * 2 {
                self.stalled = true;
                // Long enough that a fenced peer may have seen this node's disk heartbeat
                // stop (it needs the whole timeout): its orders are not to be relied on.
                if self.cfg.disk_timeout.is_some_and(|t| slept >= t / 2) {
                    self.revoke_pill_proofs();
                }
                let credit = slept - self.cfg.interval;
                for p in self.others_vec() {
                    let peer = &mut self.peers[p];
                    for h in peer
                        .last_heard
                        .iter_mut()
                        .chain([&mut peer.probe_answered])
                        .flatten()
                    {
                        *h = (*h + credit).min(now);
                    }
                }
            }
            // Probe rounds missed while this node did not run: the confirmation (a window
            // shorter than the credit's threshold) starts again, now.
            if slept > self.cfg.probe_interval * 2 {
                for p in self.others_vec() {
                    self.peers[p].confirm_from = now;
                }
            }
        }
        self.last_awake = Some(now);
    }

    /// A peer's data plane says its agent died: the token must be the one the peer's current
    /// incarnation committed to in its signed heartbeats. A death announced for a restart
    /// (the peer said so) is no death; one for a peer already dead changes nothing.
    pub(super) fn accept_notice(&mut self, now: Duration, bytes: &[u8]) -> Result<(), Rejected> {
        let (incarnation, token) = wire::decode_notice(bytes)?;
        let proof = Some((incarnation, wire::commit(&token)));
        let p = self
            .others()
            .find(|&p| self.peers[p].exit_commit == proof)
            .ok_or(Rejected::UnknownNotice)?;
        if incarnation < self.peers[p].heard_incarnation {
            // An earlier life's (late, or replayed): it says nothing of the agent that runs
            // now, whose own gates its exit did not close.
            return Err(Rejected::Replayed);
        }
        self.take_exit_notice_lease(p);
        let peer = &mut self.peers[p];
        if !peer.alive || peer.restart_until.is_some() {
            return Ok(());
        }
        if self.cfg.exit_takes_over {
            self.declare_dead(now, p, DeathReason::AgentExited);
            self.decide(now);
        } else {
            peer.restart_until = Some(now + self.cfg.restart_grace);
            let grace = self.cfg.restart_grace;
            self.event(Event::AgentExitWaiting { peer: p, grace });
        }
        Ok(())
    }

    /// A peer's data plane answered one of this node's probes: its kernel and the LAN work.
    pub(super) fn accept_probe_answer(
        &mut self,
        now: Duration,
        path: usize,
        bytes: &[u8],
    ) -> Result<(), Rejected> {
        let (incarnation, seq, p) = wire::decode_probe_answer(bytes, &self.cfg.key)?;
        let p = p as NodeId;
        if incarnation != self.incarnation
            || p >= self.cfg.nodes.len()
            || p == self.cfg.me
            || path + 1 != self.cfg.paths
        {
            return Err(Rejected::Malformed);
        }
        let peer = &mut self.peers[p];
        if seq <= peer.probe_answered_seq || seq > self.probe_seq {
            return Err(Rejected::Replayed);
        }
        peer.probe_answered_seq = seq;
        peer.probe_answered = Some(now);
        if !peer.alive && peer.kernel_since.is_none() {
            peer.kernel_since = Some(now);
        }
        Ok(())
    }

    /// A probe to the data plane of every live peer whose line is dark, and of every dead
    /// one still to be proven gone, on the LAN.
    pub(super) fn send_probes(&mut self, now: Duration) {
        let lan = self.cfg.paths - 1;
        for p in self.others_vec() {
            if !self.probing_peer(p, now) {
                continue;
            }
            self.probe_seq += 1;
            let bytes =
                wire::encode_probe(&self.cfg.key, self.incarnation, self.probe_seq, p as u8);
            self.actions.push_back(Action::Send {
                peer: p,
                path: lan,
                bytes: bytes.to_vec(),
                urgent: false,
            });
        }
        self.next_probe = now + self.cfg.probe_interval;
    }

    pub(super) fn declare_dead(&mut self, now: Duration, p: NodeId, reason: DeathReason) {
        let peer = &mut self.peers[p];
        peer.alive = false;
        peer.since = Some(now);
        peer.eligible_since = None;
        peer.restart_until = None;
        peer.disk_held = false;
        peer.fence_wanted = false;
        peer.state_fence = FenceState::None;
        peer.kernel_since = None;
        self.event(Event::PeerDead { peer: p, reason });
    }

    /// This node's end of the dedicated line to `peer` lost or regained carrier (the shell
    /// knows which peers each line interface reaches).
    pub fn handle_line_carrier(&mut self, now: Duration, peer: NodeId, up: bool) {
        let now = self.clock(now);
        if peer == self.cfg.me || self.cfg.paths < 2 {
            return;
        }
        // Only a change counts (netlink reports a link for other reasons too).
        let p = &mut self.peers[peer];
        if p.dark_since.is_none() != up {
            p.dark_since = (!up).then_some(now);
            p.confirm_from = now;
            if !up {
                self.next_probe = now;
            }
            self.event(Event::LineCarrier { peer, up });
            self.handle_timeout(now);
        }
    }
}
