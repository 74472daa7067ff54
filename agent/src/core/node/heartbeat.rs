//! Heartbeats: what this node sends (every path, turns while both work, parts for a long
//! summary, the version each peer reads) and what it takes from the peers' (proof of life
//! always; the summary only if the configurations agree).
use std::time::Duration;

use super::{peer::PeerRes, Action, Core, Event, Mismatch, NodeId, ResId};
use crate::core::wire::{self, v2, v3, Body, Header, Rejected};

/// Of one resource: the epoch the peer serves it in, its vote, its instance's health code.
type ReadState = (ResId, Option<u64>, Option<NodeId>, Option<u8>);

/// A peer's summary, checked whole before anything is taken: per resource it covers, what
/// the peer says, and the switchovers it carries.
struct Readable {
    states: Vec<ReadState>,
    moved: Vec<(ResId, NodeId, u64)>,
}

impl Core {
    /// The version this node writes to `p`: the newest `p` is known to read; version 2
    /// until then, with the flags that say what this node reads (older agents ignore
    /// them). A configuration version 2 cannot express goes to a version-2 peer as proof of
    /// life only (an empty summary): it must not take this node for dead, and could read no
    /// more. Version 3 carries everything but the instances' states.
    pub(super) fn writes_to(&self, p: NodeId) -> u8 {
        if self.cfg.emulate_v2 || !self.peers[p].reads_v3 {
            wire::V2
        } else if self.cfg.emulate_v3 || !self.peers[p].reads_v4 {
            wire::V3
        } else {
            wire::VERSION
        }
    }

    /// The newest version this node reads.
    fn reads(&self) -> u8 {
        if self.cfg.emulate_v2 {
            wire::V2
        } else if self.cfg.emulate_v3 {
            wire::V3
        } else {
            wire::VERSION
        }
    }

    /// Checks a summary against this configuration; `Err` says why it cannot be read.
    fn readable(&self, body: &Body) -> Result<Readable, Mismatch> {
        let nodes = self.cfg.nodes.len();
        match body {
            Body::V3(part) => {
                if part.digest != self.cfg.digest || part.total as usize != self.cfg.resources.len()
                {
                    return Err(Mismatch::Digest);
                }
                let mut states = Vec::new();
                let mut moved = Vec::new();
                for (r, s) in part.states() {
                    let vote = s.vote.map(usize::from);
                    let to = s.moved.map(|(n, _)| usize::from(n));
                    if vote.is_some_and(|v| v >= nodes) || to.is_some_and(|v| v >= nodes) {
                        // The same digest, another node count: cannot be; read nothing.
                        return Err(Mismatch::Digest);
                    }
                    states.push((r, s.serving, vote, s.instance));
                    if let Some((n, v)) = s.moved {
                        moved.push((r, usize::from(n), v));
                    }
                }
                Ok(Readable { states, moved })
            }
            Body::V2(s) => {
                if !self.cfg.fits_v2() {
                    return Err(Mismatch::Inexpressible);
                }
                let res = |ip| self.cfg.resource_of(ip).ok_or(Mismatch::Unknown);
                let node = |n: u8| {
                    Some(usize::from(n))
                        .filter(|&n| n < nodes)
                        .ok_or(Mismatch::Unknown)
                };
                let mut states: Vec<_> = (0..self.cfg.resources.len())
                    .map(|r| (r, None, None, None))
                    .collect();
                for (ip, epoch) in &s.serving {
                    states[res(ip)?].1 = Some(*epoch);
                }
                for (ip, n) in &s.votes {
                    states[res(ip)?].2 = Some(node(*n)?);
                }
                let moved = s
                    .overrides
                    .iter()
                    .map(|(ip, n, v)| Ok((res(ip)?, node(*n)?, *v)))
                    .collect::<Result<_, _>>()?;
                Ok(Readable { states, moved })
            }
        }
    }

    pub(super) fn accept_heartbeat(
        &mut self,
        now: Duration,
        path: usize,
        bytes: &[u8],
    ) -> Result<(), Rejected> {
        let hb = wire::decode(bytes, &self.cfg.key)?;
        if hb.version > self.reads() {
            return Err(Rejected::ForeignVersion);
        }
        let h = &hb.header;
        let p = self
            .cfg
            .nodes
            .iter()
            .position(|n| *n == h.sender)
            .ok_or(Rejected::Malformed)?;
        if p == self.cfg.me || h.path as usize != path || path >= self.cfg.paths {
            return Err(Rejected::Malformed);
        }
        // Only what is addressed to this incarnation counts; anything else only says which
        // incarnation of the peer to address (the newest wins, so a replay cannot hold it back).
        let peer = &mut self.peers[p];
        if h.incarnation > peer.heard_incarnation {
            // A new incarnation of the peer: what it echoes is about its new life only, and
            // it may be another version (an upgrade or a downgrade): what it reads is what
            // it says now, before it can address this node.
            peer.heard_incarnation = h.incarnation;
            peer.echo = vec![None; self.cfg.paths];
            // Its earlier life's exit closed that life's gates; this one leases its own.
            peer.kernel_closed = false;
            let writes = self.writes_to(p);
            self.peers[p].reads_v3 = h.reads_v3;
            self.peers[p].reads_v4 = h.reads_v4;
            if self.writes_to(p) != writes {
                let version = self.writes_to(p);
                self.event(Event::WireVersion { peer: p, version });
            }
        }
        let peer = &mut self.peers[p];
        if h.incarnation < peer.heard_incarnation {
            // From a life of the peer that has ended: late, or replayed.
            return Err(Rejected::Replayed);
        }
        if h.peer_incarnation != self.incarnation {
            return Err(Rejected::Unaddressed);
        }
        peer.guard.check(h)?;

        // Authentic, new, and for this incarnation: the peer is alive, whatever its summary.
        let mut changed = self.take_liveness(now, p, path, h);
        if !self.latest_here(p, path, h) {
            // It crossed a newer one: it proves the peer alive and says nothing newer.
            if changed {
                self.decide(now);
            }
            return Ok(());
        }
        let peer = &mut self.peers[p];
        peer.echo[path] = Some((h.sent_at_us, now));
        let writes = self.writes_to(p);
        self.peers[p].reads_v3 |= h.reads_v3;
        self.peers[p].reads_v4 |= h.reads_v4;
        if !h.reads_v3 && hb.version == wire::V2 {
            // A version-2 agent (perhaps a downgrade).
            self.peers[p].reads_v3 = false;
        }
        if !h.reads_v4 && hb.version <= wire::V3 {
            // An older agent.
            self.peers[p].reads_v4 = false;
        }
        if self.writes_to(p) != writes {
            let version = self.writes_to(p);
            self.event(Event::WireVersion { peer: p, version });
        }
        let peer = &mut self.peers[p];
        if h.incarnation != peer.summary_incarnation {
            // A new life: its old votes say nothing now (what it served stays, to be safe,
            // until its new summary says otherwise).
            peer.summary_incarnation = h.incarnation;
            peer.header_sent_us = 0;
            for r in &mut peer.res {
                *r = PeerRes {
                    serving: r.serving,
                    ..PeerRes::default()
                };
            }
        }
        if h.sent_at_us >= peer.header_sent_us {
            peer.header_sent_us = h.sent_at_us;
            changed |= (peer.lan_up, peer.ready) != (h.lan_up, h.ready);
            peer.lan_up = h.lan_up;
            peer.ready = h.ready;
        }
        if matches!(hb.body, Body::V2(_)) && h.reads_v3 && !self.cfg.emulate_v2 {
            // An agent that reads version 3 writing version 2 until it knows this node does:
            // proof of life only (its summary carries no digest, and version 3 follows).
            if changed {
                self.decide(now);
            }
            return Ok(());
        }
        match self.readable(&hb.body) {
            Err(why) => {
                let peer = &mut self.peers[p];
                if peer.mismatch != Some(why) {
                    peer.mismatch = Some(why);
                    peer.forget_summary();
                    self.event(Event::ConfigMismatch { peer: p, why });
                    changed = true;
                }
            }
            Ok(summary) => {
                if self.peers[p].mismatch.take().is_some() {
                    self.event(Event::ConfigAgrees { peer: p });
                    changed = true;
                }
                changed |= self.take_summary(p, h, summary);
            }
        }
        if changed {
            self.decide(now);
        }
        Ok(())
    }

    /// The liveness an authentic heartbeat proves; true if the peer came alive.
    fn take_liveness(&mut self, now: Duration, p: NodeId, path: usize, h: &Header) -> bool {
        let us = now.as_micros() as u64;
        let fresh = self.fresh(path);
        let peer = &mut self.peers[p];
        peer.last_heard[path] = Some(now);
        // An agent that said it is stopping for a restart does not take it back: only a new
        // incarnation ends the wait (a heartbeat it sent just before may arrive after).
        if h.restarting {
            peer.restart_until = Some(now + self.cfg.restart_grace);
        } else if h.incarnation > peer.summary_incarnation && peer.summary_incarnation != 0 {
            peer.restart_until = None;
        }
        peer.exit_commit =
            (h.exit_commit != [0; wire::TOKEN_LEN]).then_some((h.incarnation, h.exit_commit));
        peer.acked_us = peer.acked_us.max(h.echo_us);
        let newest = peer.echo[path].is_none_or(|(sent, _)| h.sent_at_us >= sent);
        if newest {
            peer.hears_us[path] = h.echo_us != 0 && u128::from(h.echo_hold_us) <= fresh.as_micros();
            if h.echo_us != 0 && us >= h.echo_us + h.echo_hold_us as u64 {
                peer.rtt[path] = Some(Duration::from_micros(
                    us - h.echo_us - h.echo_hold_us as u64,
                ));
            }
        }
        let (leased, restarting) = (h.leased, h.restarting);
        self.take_lease(now, p, leased, restarting);
        let peer = &mut self.peers[p];
        if !peer.alive {
            peer.alive = true;
            peer.since = Some(now);
            peer.kernel_closed = false;
            // A peer we hear again (restarted, or back after a fence) needs a new fence if it
            // dies again.
            peer.fence = super::FenceState::None;
            peer.pill_proof = false;
            peer.state_fence = super::FenceState::None;
            peer.path_up = vec![true; self.cfg.paths];
            self.event(Event::PeerAlive { peer: p });
            self.withdraw_order(p);
            return true;
        }
        if !peer.path_up[path] {
            peer.path_up[path] = true;
            self.event(Event::PathBack { peer: p, path });
        }
        false
    }

    /// Is `h` the newest heard from `p` on `path` (else it crossed a newer one)?
    fn latest_here(&self, p: NodeId, path: usize, h: &Header) -> bool {
        self.peers[p].echo[path].is_none_or(|(sent, _)| h.sent_at_us >= sent)
    }

    /// Takes what a readable summary says of each resource it covers, unless something newer
    /// was taken for it; true if anything changed.
    fn take_summary(&mut self, p: NodeId, h: &Header, s: Readable) -> bool {
        let mut changed = !self.peers[p].known;
        self.peers[p].known = true;
        for (r, serving, vote, instance) in s.states {
            let pr = &mut self.peers[p].res[r];
            if h.sent_at_us < pr.sent_us {
                continue;
            }
            changed |= (pr.serving, pr.vote, pr.instance) != (serving, vote, instance);
            *pr = PeerRes {
                serving,
                vote,
                instance,
                sent_us: h.sent_at_us,
                acked_us: pr.acked_us.max(h.echo_us),
            };
            if let Some(epoch) = serving {
                self.res[r].max_epoch = self.res[r].max_epoch.max(epoch);
            }
        }
        for (r, node, version) in s.moved {
            // Newest order wins; equal versions (two operators at once) by node index.
            if self.res[r]
                .moved_to
                .is_none_or(|(n, v)| (version, node) > (v, n))
            {
                self.res[r].moved_to = Some((node, version));
                changed = true;
            }
        }
        changed
    }

    /// How recent the last heartbeat on `path` must be for it to count as working: the
    /// longest regular gap while the paths take turns (the line skips one round in
    /// `lan_every`, the LAN carries one), and two intervals for a late wake-up.
    pub(super) fn fresh(&self, path: usize) -> Duration {
        let gap = if path + 1 == self.cfg.paths {
            self.cfg.lan_every
        } else {
            2
        };
        self.cfg.interval * (gap + 2)
    }

    /// `path` to `p` works both ways: this node heard `p` on it lately, and `p` said it heard
    /// this node there.
    fn works_both_ways(&self, p: NodeId, path: usize, now: Duration) -> bool {
        let peer = &self.peers[p];
        peer.hears_us[path] && peer.last_heard[path].is_some_and(|t| now <= t + self.fresh(path))
    }

    /// May this round's periodic heartbeat to `p` on `path` be left out? While both paths
    /// work both ways they take turns: the LAN carries one round in `lan_every`, the line the
    /// others, so the peer hears this node every interval by one path, and each path is
    /// heard at least every `lan_every` intervals. If a path fails silently (carrier up),
    /// each side sees that within its freshness window (its own silence, or the other's stale
    /// echo), and the other path goes back to every interval; meanwhile it kept its turns,
    /// so the peer's longest gap is `lan_every` intervals (at most `misses - 2`). A dark line
    /// carries nothing, and the LAN every round.
    fn may_rest(&self, p: NodeId, path: usize, now: Duration) -> bool {
        if self.cfg.paths < 2 || self.cfg.lan_every < 2 || self.peers[p].dark_since.is_some() {
            return false;
        }
        let lan = self.cfg.paths - 1;
        let turn = if self.rounds.is_multiple_of(u64::from(self.cfg.lan_every)) {
            lan
        } else {
            0
        };
        path != turn && self.works_both_ways(p, turn, now) && self.works_both_ways(p, path, now)
    }

    /// This node's summary per resource, for versions 3 and 4.
    fn states(&self) -> Vec<v3::State> {
        (0..self.res.len())
            .map(|a| v3::State {
                serving: self.res[a].open.then_some(self.res[a].epoch),
                vote: self.votes[a].map(|n| n as u8),
                moved: self.res[a].moved_to.map(|(n, v)| (n as u8, v)),
                instance: self.cfg.resources[a]
                    .service
                    .and_then(|sv| self.told[sv.component]),
            })
            .collect()
    }

    /// This node's summary by address, for version 2 (empty if the configuration does not
    /// fit it).
    fn summary_v2(&self) -> v2::Summary {
        if !self.cfg.fits_v2() {
            return v2::Summary::default();
        }
        let ip = |a: usize| self.cfg.resources[a].ip;
        v2::Summary {
            serving: (0..self.res.len())
                .filter(|&a| self.res[a].open)
                .map(|a| (ip(a), self.res[a].epoch))
                .collect(),
            votes: (0..self.res.len())
                .filter_map(|a| self.votes[a].map(|n| (ip(a), n as u8)))
                .collect(),
            overrides: (0..self.res.len())
                .filter_map(|a| self.res[a].moved_to.map(|(n, v)| (ip(a), n as u8, v)))
                .collect(),
        }
    }

    /// A heartbeat to every peer on every working path; `urgent` when it carries news.
    pub(super) fn send_heartbeats(&mut self, now: Duration, urgent: bool) {
        let others = self.others_vec();
        let writes = |v: u8| others.iter().any(|&p| self.writes_to(p) == v);
        let states = (writes(wire::VERSION) || writes(wire::V3)).then(|| self.states());
        let parts = |v: u8| {
            writes(v)
                .then(|| states.as_ref().map(|s| v3::pack(s, v)))
                .flatten()
        };
        let (v4_parts, v3_parts) = (parts(wire::VERSION), parts(wire::V3));
        let v2_summary = writes(wire::V2).then(|| self.summary_v2());
        let total = self.cfg.resources.len() as u32;
        let us = self.next_stamp(now);
        self.last_stamp = us;
        for path in 0..self.cfg.paths {
            let base = self.seq[path];
            let mut used = 0;
            for &p in &others {
                // Nothing goes out on a dedicated line without carrier.
                if path == 0 && self.cfg.paths > 1 && self.peers[p].dark_since.is_some() {
                    continue;
                }
                if !urgent && self.may_rest(p, path, now) {
                    continue;
                }
                let (echo_us, echo_hold_us) = match self.peers[p].echo[path] {
                    Some((sent, at)) => (
                        sent,
                        (now.saturating_sub(at)).as_micros().min(u32::MAX as u128) as u32,
                    ),
                    None => (0, 0),
                };
                let mut h = Header {
                    sender: self.cfg.nodes[self.cfg.me].clone(),
                    incarnation: self.incarnation,
                    peer_incarnation: self.peers[p].heard_incarnation,
                    seq: base + 1,
                    path: path as u8,
                    sent_at_us: us,
                    echo_us,
                    echo_hold_us,
                    exit_commit: self.exit_commit,
                    lan_up: self.lan_up,
                    ready: self.ready,
                    restarting: self.restarting,
                    reads_v3: self.reads() >= wire::V3,
                    reads_v4: self.reads() >= wire::VERSION,
                    leased: self.cfg.lease,
                };
                let version = self.writes_to(p);
                let packed = match version {
                    wire::VERSION => v4_parts.as_ref(),
                    wire::V3 => v3_parts.as_ref(),
                    _ => None,
                };
                let messages = match (packed, &v2_summary) {
                    (Some(parts), _) => parts
                        .iter()
                        .enumerate()
                        .map(|(k, part)| {
                            h.seq = base + 1 + k as u64;
                            v3::encode(&h, version, &self.cfg.digest, total, part, &self.cfg.key)
                        })
                        .collect(),
                    (None, Some(s)) => vec![v2::encode(&h, s, &self.cfg.key)],
                    _ => unreachable!("a summary is built for every version written"),
                };
                used = used.max(messages.len() as u64);
                for bytes in messages {
                    self.actions.push_back(Action::Send {
                        peer: p,
                        path,
                        bytes,
                        urgent,
                    });
                }
            }
            self.seq[path] = base + used.max(1);
        }
        if !urgent {
            self.rounds += 1;
        }
        self.next_heartbeat = now + self.cfg.interval;
        // Probes due soon go with the heartbeats: one wake-up, not two.
        if self.probing(now) && now + self.cfg.probe_interval / 2 >= self.next_probe {
            self.send_probes(now);
        }
    }
}
