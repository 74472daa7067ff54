//! Services (patent figs 15 to 17): each service on an address is a resource of its own,
//! whose gate is derived rather than elected. The node serving the address serves the
//! service while its instance is not faulty; when it is, the service's traffic goes on to
//! the first peer (in the address's preference) whose instance can serve, and comes back
//! once its own instance can serve again (after the hold). Nothing is announced: the address
//! stays where it is. A node not serving the address receives the service's traffic from
//! the node that does while its own instance can serve (armed in advance, so that nothing
//! forwarded is dropped while a heartbeat is on its way), and otherwise holds what the
//! address's gate holds (a whole handover forwards the services with it).
//!
//! A component that escalates makes its node unfit for the address (`rank`): the address
//! goes over as a whole, by the election.
use std::time::Duration;

use super::{Action, Core, Event, Gate, NodeId, ResId};
use crate::core::component::{Health, Todo};

impl Core {
    /// The address resource of service resource `s` and its component.
    fn service_of(&self, s: ResId) -> Option<(ResId, usize)> {
        self.cfg.resources[s]
            .service
            .map(|sv| (sv.address, sv.component))
    }

    pub(super) fn is_service(&self, a: ResId) -> bool {
        self.cfg.resources[a].service.is_some()
    }

    /// Node `n`'s instance of service resource `s`, as far as this node knows.
    pub(super) fn health(&self, n: NodeId, s: ResId, now: Duration) -> Option<Health> {
        let (_, c) = self.service_of(s)?;
        if n == self.cfg.me {
            let comp = &self.components[c];
            return self.cfg.components[c].here.then(|| comp.health(now));
        }
        let p = &self.peers[n];
        (p.alive && p.known)
            .then_some(p.res[s].instance)
            .flatten()
            .map(Health::from_code)
    }

    /// How fit node `n` is to serve address `a`: 0 not eligible, 1 one of its instances on
    /// `a` escalated, 2 one is faulty, 3 all is well. Without services: 0 or 3.
    pub(super) fn rank(&self, n: NodeId, a: ResId, now: Duration) -> u8 {
        if !self.eligible(n) {
            return 0;
        }
        let mut rank = 3;
        for &s in &self.services_of[a] {
            match self.health(n, s, now) {
                Some(h) if h.escalated => return 1,
                Some(h) if h.faulty => rank = 2,
                _ => {}
            }
        }
        rank
    }

    /// The peer that takes service `s` (on address `a`, served here) if its instance here
    /// fails: the first in the address's preference whose instance can serve, said in a
    /// heartbeat written after it heard that this node serves the address (so its gate
    /// receives from this one: nothing is forwarded into a closed gate, nor back and forth
    /// with a node that has not yet heard of a handover).
    fn taker(&self, s: ResId, a: ResId, now: Duration) -> Option<NodeId> {
        let me = self.cfg.me;
        self.cfg.resources[a].preference.iter().copied().find(|&p| {
            p != me
                && self.lan_up
                && self.eligible(p)
                && self.peers[p].res[a].acked_us >= self.res[a].opened_us
                && self.health(p, s, now).is_some_and(|h| h.can_serve)
        })
    }

    /// What service `s`'s gate becomes if its instance here exits now, while it is served
    /// here: the data plane writes it the moment the process exits (the shell arms it), and
    /// the core decides the same once it hears.
    pub fn exit_plan(&self, s: ResId) -> Option<Gate> {
        let (a, _) = self.service_of(s)?;
        let now = self.fed;
        (self.serving(a) && self.res[s].derived == Gate::Open)
            .then(|| self.taker(s, a, now))
            .flatten()
            .map(Gate::Forward)
    }

    /// The gate service resource `s` must have here now.
    fn service_gate(&self, s: ResId, now: Duration) -> Gate {
        let Some((a, _)) = self.service_of(s) else {
            return Gate::Closed;
        };
        let me = self.cfg.me;
        if self.serving(a) {
            let mine = self.health(me, s, now);
            if !mine.is_some_and(|h| h.faulty) {
                return Gate::Open;
            }
            // If none can take it, it stays (nothing moves: the status says so).
            return self.taker(s, a, now).map_or(Gate::Open, Gate::Forward);
        }
        let server = self
            .current(a)
            .map(|(n, _)| n)
            .filter(|&n| n != me && self.peers[n].alive);
        let armed =
            self.ready && self.lan_up && self.health(me, s, now).is_some_and(|h| h.can_serve);
        match server {
            Some(x) if armed => Gate::Receive(x),
            _ => self.gate(a),
        }
    }

    /// Sets every service's gate to what it must be now. The first time a service's instance
    /// here fails with no peer's able to serve, that is said once.
    pub(super) fn derive_services(&mut self, now: Duration) {
        for i in 0..self.service_res.len() {
            let s = self.service_res[i];
            let gate = self.service_gate(s, now);
            let (a, _) = self.service_of(s).unwrap();
            let stranded = gate == Gate::Open
                && self.serving(a)
                && self.health(self.cfg.me, s, now).is_some_and(|h| h.faulty);
            if stranded != self.res[s].stranded {
                self.res[s].stranded = stranded;
                if stranded {
                    self.event(Event::NoInstance { res: s });
                }
            }
            if self.res[s].derived != gate {
                self.res[s].derived = gate;
                self.set_gate(s, gate);
            }
        }
    }

    /// What this node tells its peers of each component here (`None`: none here).
    fn health_codes(&self, now: Duration) -> Vec<Option<u8>> {
        (0..self.components.len())
            .map(|c| {
                self.cfg.components[c]
                    .here
                    .then(|| self.components[c].health(now).code())
            })
            .collect()
    }

    /// After a component's input or the passing of time: restarts and escalations asked
    /// for, state changes reported, and, if what the peers are told changed, the gates
    /// decided again and the peers told at once.
    pub(super) fn components_changed(&mut self, now: Duration, c: usize, todo: Vec<Todo>) {
        for t in todo {
            match t {
                Todo::Restart => self.actions.push_back(Action::Restart { component: c }),
                Todo::Escalate => self.event(Event::Escalated { component: c }),
            }
        }
        self.health_may_have_changed(now);
    }

    /// Compares what the peers are told with what was last told; on a change, decides and
    /// sends at once.
    pub(super) fn health_may_have_changed(&mut self, now: Duration) {
        let codes = self.health_codes(now);
        if codes == self.told {
            self.derive_services(now);
            return;
        }
        let told = std::mem::take(&mut self.told);
        for (c, (new, old)) in codes.iter().zip(&told).enumerate() {
            let state = |code: &Option<u8>| code.map(|x| Health::from_code(x).state);
            if state(new) != state(old) {
                if let Some(state) = state(new) {
                    let fault = self.components[c].fault;
                    self.event(Event::Component {
                        component: c,
                        state,
                        fault,
                    });
                }
            }
        }
        self.told = codes;
        self.decide(now);
        self.send_heartbeats(now, true);
    }

    /// A check of component `c` passed or failed.
    pub fn handle_check(&mut self, now: Duration, c: usize, check: usize, pass: bool) {
        let now = self.clock(now);
        let mut todo = Vec::new();
        self.components[c].check(now, check, pass, &mut todo);
        self.components_changed(now, c, todo);
    }

    /// Component `c`'s process exited (the kernel told).
    pub fn handle_exited(&mut self, now: Duration, c: usize) {
        let now = self.clock(now);
        let mut todo = Vec::new();
        self.components[c].exited(now, &mut todo);
        self.components_changed(now, c, todo);
    }

    /// Component `c`'s instance could not be started at all.
    pub fn handle_start_failed(&mut self, now: Duration, c: usize) {
        let now = self.clock(now);
        let mut todo = Vec::new();
        self.components[c].start_failed(now, &mut todo);
        self.components_changed(now, c, todo);
    }

    /// The `Restart` of component `c` finished: its instance runs again (`ok`) or not.
    pub fn handle_restarted(&mut self, now: Duration, c: usize, ok: bool) {
        let now = self.clock(now);
        let mut todo = Vec::new();
        self.components[c].restarted(now, ok, &mut todo);
        self.components_changed(now, c, todo);
    }

    /// Restarts whose backoff ended, holds that ended.
    pub(super) fn components_tick(&mut self, now: Duration) {
        if self.components.is_empty() {
            return;
        }
        for c in 0..self.components.len() {
            let mut todo = Vec::new();
            self.components[c].timeout(now, &mut todo);
            for t in todo {
                if t == Todo::Restart {
                    self.actions.push_back(Action::Restart { component: c });
                }
            }
        }
        self.health_may_have_changed(now);
    }

    /// When a component next changes by itself.
    pub(super) fn components_deadline(&self, now: Duration) -> Option<Duration> {
        self.components
            .iter()
            .filter_map(|c| c.next_change(now))
            .min()
    }

    // ---- read-only views for status and tests ----

    pub fn component(&self, c: usize) -> &crate::core::component::Component {
        &self.components[c]
    }

    /// Node `n`'s instance of service resource `s` as this node knows it.
    pub fn instance(&self, n: NodeId, s: ResId) -> Option<Health> {
        self.health(n, s, self.fed)
    }

    /// This node's instance of `s` failed and no peer's can serve: its traffic stays here.
    pub fn stranded(&self, s: ResId) -> bool {
        self.res[s].stranded
    }
}
