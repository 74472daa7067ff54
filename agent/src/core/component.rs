//! One service instance on this node as a monitored component (the patent's state management
//! table, 506, and fault recovery, 504): its checks' results and its process's exit in, its
//! state and what to do about it out. Pure: time is given, restarts are actions whose
//! completions come back as inputs.
use std::{collections::VecDeque, time::Duration};

/// A component's state.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    /// Its checks pass: it can serve.
    Normal,
    /// A check fell (or its process exited); no restart under way.
    Failed,
    /// Restarted (or about to be), waiting for its checks to rise.
    Recovering,
    /// Not started yet, or stopped on purpose.
    Standby,
}

impl State {
    pub fn name(self) -> &'static str {
        match self {
            State::Normal => "normal",
            State::Failed => "failed",
            State::Recovering => "recovering",
            State::Standby => "standby",
        }
    }
}

/// How a component is checked and recovered (from `config::service`).
#[derive(Clone, Debug, PartialEq)]
pub struct Policy {
    /// Per check: consecutive failures that fail it, consecutive passes that restore it.
    pub checks: Vec<(u32, u32)>,
    /// Restarts allowed within `window`.
    pub restarts: u32,
    pub window: Duration,
    pub backoff: Duration,
    pub max_backoff: Duration,
    /// Escalate to a takeover of the whole address when the budget is spent.
    pub escalate: bool,
    /// Escalate at the first failure.
    pub critical: bool,
    /// Normal this long after a recovery before it may serve again; also how long a started
    /// instance has to pass its checks before failing them counts.
    pub hold: Duration,
}

/// What the component asks the shell (or the node) to do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Todo {
    /// Stop what is left of the instance and start it again.
    Restart,
    /// Its address must be taken over as a whole (the whole-server path, fence included).
    Escalate,
}

/// Why a component failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// Its process exited (seen by the kernel).
    Exited,
    /// Check `n` failed `fall` times in a row.
    Check(usize),
    /// A restart did not start it.
    StartFailed,
}

impl Fault {
    /// Its stable name (logs, JSON).
    pub fn kind(self) -> String {
        match self {
            Fault::Exited => "exited".into(),
            Fault::Check(n) => format!("check{}", n + 1),
            Fault::StartFailed => "start_failed".into(),
        }
    }

    pub fn describe(self) -> String {
        match self {
            Fault::Exited => "its process exited".into(),
            Fault::Check(n) => format!("check {} failed", n + 1),
            Fault::StartFailed => "it could not be started".into(),
        }
    }
}

#[derive(Clone, Debug)]
pub struct Component {
    policy: Policy,
    state: State,
    since: Duration,
    /// Per check: consecutive failures and passes.
    fails: Vec<u32>,
    passes: Vec<u32>,
    /// Checks that have passed `rise` times since the last failure or restart.
    risen: Vec<bool>,
    /// When restarts were ordered, within the window.
    restarts: VecDeque<Duration>,
    /// A restart waiting for its backoff, or under way.
    restart_at: Option<Duration>,
    restarting: bool,
    escalated: bool,
    /// The last fault, for the status table.
    pub fault: Option<Fault>,
    /// Whether it has recovered from a fault since it was last Normal from the start.
    recovered: bool,
}

impl Component {
    /// A component whose instance has just been started (or found running): Recovering
    /// until its checks rise, as after a restart. A component without checks is Normal once
    /// started.
    pub fn new(policy: Policy, now: Duration) -> Self {
        let n = policy.checks.len();
        let mut c = Self {
            policy,
            state: State::Recovering,
            since: now,
            fails: vec![0; n],
            passes: vec![0; n],
            risen: vec![false; n],
            restarts: VecDeque::new(),
            restart_at: None,
            restarting: false,
            escalated: false,
            fault: None,
            recovered: false,
        };
        if n == 0 {
            c.state = State::Normal;
        }
        c
    }

    /// A component this node has no instance of (or one not started): it says nothing and
    /// never serves.
    pub fn standby(policy: Policy, now: Duration) -> Self {
        let mut c = Self::new(policy, now);
        c.state = State::Standby;
        c
    }

    /// Its instance could not be started where its stateful address was taken (mounting or
    /// starting failed): failed and escalated, no restart (the address goes elsewhere).
    pub fn gave_up(policy: Policy, now: Duration) -> Self {
        let mut c = Self::new(policy, now);
        c.state = State::Failed;
        c.fault = Some(Fault::StartFailed);
        c.escalated = true;
        c
    }

    /// The instance could not be started (at agent start): failed, and restarted as the
    /// recovery says.
    pub fn start_failed(&mut self, now: Duration, todo: &mut Vec<Todo>) {
        if self.state != State::Standby {
            self.fail(now, Fault::StartFailed, todo);
        }
    }

    pub fn state(&self) -> State {
        self.state
    }

    pub fn since(&self) -> Duration {
        self.since
    }

    /// Whether this instance may serve at `now`: Normal, and past the hold time if it came
    /// back from a fault (hysteresis: a flapping service does not ping-pong).
    pub fn can_serve(&self, now: Duration) -> bool {
        self.state == State::Normal && (!self.recovered || now >= self.since + self.policy.hold)
    }

    /// When `can_serve` will change by itself (the end of the hold), if it will.
    pub fn next_change(&self, now: Duration) -> Option<Duration> {
        let hold_ends = (self.state == State::Normal && self.recovered)
            .then_some(self.since + self.policy.hold)
            .filter(|&t| t > now);
        [hold_ends, self.restart_at.filter(|_| !self.restarting)]
            .into_iter()
            .flatten()
            .min()
    }

    fn set(&mut self, now: Duration, state: State) {
        if self.state != state {
            self.state = state;
            self.since = now;
        }
    }

    /// One check's result.
    pub fn check(&mut self, now: Duration, n: usize, pass: bool, todo: &mut Vec<Todo>) {
        let Some(&(fall, rise)) = self.policy.checks.get(n) else {
            return;
        };
        if pass {
            self.fails[n] = 0;
            self.passes[n] = self.passes[n].saturating_add(1);
            if self.passes[n] >= rise {
                self.risen[n] = true;
            }
            // Recovering after a restart, or Failed with no restart coming (a watched
            // service its own supervisor restarted, a budget spent): Normal once every
            // check has risen, after the hold.
            let waiting = self.restarting || self.restart_at.is_some();
            let back = matches!(self.state, State::Recovering | State::Failed) && !waiting;
            if back && self.risen.iter().all(|r| *r) {
                if self.state == State::Failed {
                    self.recovered = true;
                }
                self.set(now, State::Normal);
            }
        } else {
            self.passes[n] = 0;
            self.risen[n] = false;
            self.fails[n] = self.fails[n].saturating_add(1);
            // One that never came up after a start fails too, once it has had the hold time
            // to come up (a slow start is not a fault).
            let stuck = self.state == State::Recovering
                && !self.restarting
                && self.restart_at.is_none()
                && now >= self.since + self.policy.hold;
            if self.fails[n] >= fall && (self.state == State::Normal || stuck) {
                self.fail(now, Fault::Check(n), todo);
            }
        }
    }

    /// The instance's process exited: failed at once, whatever the checks say.
    pub fn exited(&mut self, now: Duration, todo: &mut Vec<Todo>) {
        if self.restarting || self.state == State::Standby {
            return;
        }
        self.risen.iter_mut().for_each(|r| *r = false);
        self.passes.iter_mut().for_each(|p| *p = 0);
        if matches!(self.state, State::Normal | State::Recovering) {
            self.fail(now, Fault::Exited, todo);
        }
    }

    fn fail(&mut self, now: Duration, fault: Fault, todo: &mut Vec<Todo>) {
        if self.can_serve(now) {
            // It served again since it last escalated: this is a new episode.
            self.escalated = false;
        }
        self.fault = Some(fault);
        self.set(now, State::Failed);
        if self.policy.critical && !self.escalated {
            self.escalated = true;
            todo.push(Todo::Escalate);
        }
        self.plan_restart(now, todo);
    }

    /// Orders the next restart within the budget, or escalates when it is spent.
    fn plan_restart(&mut self, now: Duration, todo: &mut Vec<Todo>) {
        while self
            .restarts
            .front()
            .is_some_and(|&t| now >= t + self.policy.window)
        {
            self.restarts.pop_front();
        }
        if (self.restarts.len() as u32) < self.policy.restarts {
            let k = self.restarts.len() as u32;
            let delay = self
                .policy
                .backoff
                .saturating_mul(1u32 << k.min(20))
                .min(self.policy.max_backoff);
            self.restart_at = Some(now + delay);
            self.set(now, State::Recovering);
            self.timeout(now, todo);
        } else if self.policy.escalate && !self.escalated {
            self.escalated = true;
            todo.push(Todo::Escalate);
        }
    }

    /// Time passes: a restart whose backoff has ended is ordered.
    pub fn timeout(&mut self, now: Duration, todo: &mut Vec<Todo>) {
        if let Some(at) = self.restart_at {
            if now >= at && !self.restarting {
                self.restarting = true;
                self.restarts.push_back(now);
                todo.push(Todo::Restart);
            }
        }
    }

    /// The shell restarted the instance (`ok`) or could not.
    pub fn restarted(&mut self, now: Duration, ok: bool, todo: &mut Vec<Todo>) {
        if !self.restarting {
            return;
        }
        self.restarting = false;
        self.restart_at = None;
        self.fails.iter_mut().for_each(|f| *f = 0);
        self.passes.iter_mut().for_each(|p| *p = 0);
        self.risen.iter_mut().for_each(|r| *r = false);
        if ok {
            self.recovered = true;
            if self.policy.checks.is_empty() {
                self.set(now, State::Normal);
            } else {
                self.set(now, State::Recovering);
            }
        } else {
            self.fault = Some(Fault::StartFailed);
            self.set(now, State::Failed);
            self.plan_restart(now, todo);
        }
    }

    /// Whether this component has escalated (its address goes over as a whole), until it
    /// is Normal again and may serve.
    pub fn escalated(&self, now: Duration) -> bool {
        self.escalated && !self.can_serve(now)
    }

    /// Whether it failed and cannot serve yet (an instance still starting is not faulty: its
    /// traffic stays here, as it would without the agent).
    pub fn faulty(&self, now: Duration) -> bool {
        !self.can_serve(now) && (self.state == State::Failed || self.fault.is_some())
    }

    /// What the peers are told of it.
    pub fn health(&self, now: Duration) -> Health {
        Health {
            state: self.state,
            can_serve: self.can_serve(now),
            escalated: self.escalated(now),
            faulty: self.faulty(now),
        }
    }
}

/// A component's state as its peers read it: one byte in version-4 heartbeats.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Health {
    pub state: State,
    pub can_serve: bool,
    pub escalated: bool,
    pub faulty: bool,
}

const CAN_SERVE: u8 = 4;
const ESCALATED: u8 = 8;
const FAULTY: u8 = 16;

impl Health {
    pub fn code(self) -> u8 {
        let state = match self.state {
            State::Normal => 0,
            State::Failed => 1,
            State::Recovering => 2,
            State::Standby => 3,
        };
        let flag = |set: bool, f: u8| if set { f } else { 0 };
        state
            | flag(self.can_serve, CAN_SERVE)
            | flag(self.escalated, ESCALATED)
            | flag(self.faulty, FAULTY)
    }

    /// The inverse of `code` (the wire refuses bits it does not know).
    pub fn from_code(c: u8) -> Self {
        Health {
            state: match c & 3 {
                0 => State::Normal,
                1 => State::Failed,
                2 => State::Recovering,
                _ => State::Standby,
            },
            can_serve: c & CAN_SERVE != 0,
            escalated: c & ESCALATED != 0,
            faulty: c & FAULTY != 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn policy() -> Policy {
        Policy {
            checks: vec![(2, 3)],
            restarts: 2,
            window: ms(10_000),
            backoff: ms(100),
            max_backoff: ms(150),
            escalate: true,
            critical: false,
            hold: ms(1000),
        }
    }

    /// A component started at 0 whose check has risen.
    fn normal(p: Policy) -> Component {
        let mut c = Component::new(p, ms(0));
        let mut todo = vec![];
        for t in 1..=3 {
            c.check(ms(t), 0, true, &mut todo);
        }
        assert_eq!((c.state(), todo), (State::Normal, vec![]));
        assert!(c.can_serve(ms(3)), "no hold before the first service");
        c
    }

    #[test]
    fn a_check_fails_after_fall_and_comes_back_after_rise_and_hold() {
        let mut c = normal(policy());
        let mut todo = vec![];
        c.check(ms(10), 0, false, &mut todo);
        assert_eq!(c.state(), State::Normal, "one failure is not a fall of 2");
        c.check(ms(20), 0, false, &mut todo);
        assert_eq!(c.fault, Some(Fault::Check(0)));
        // Failed, a restart planned after the backoff: Recovering, nothing ordered yet.
        assert_eq!((c.state(), &todo[..]), (State::Recovering, &[][..]));
        assert_eq!(c.next_change(ms(20)), Some(ms(120)));
        c.timeout(ms(119), &mut todo);
        assert!(todo.is_empty());
        c.timeout(ms(120), &mut todo);
        assert_eq!(todo, vec![Todo::Restart]);
        todo.clear();
        // Checks during the restart do not count.
        c.check(ms(121), 0, true, &mut todo);
        c.restarted(ms(130), true, &mut todo);
        assert_eq!(c.state(), State::Recovering);
        for t in [140, 150] {
            c.check(ms(t), 0, true, &mut todo);
        }
        assert_eq!(c.state(), State::Recovering, "rise is 3");
        c.check(ms(160), 0, true, &mut todo);
        assert_eq!(c.state(), State::Normal);
        assert!(!c.can_serve(ms(1159)), "held after a recovery");
        assert_eq!(c.next_change(ms(160)), Some(ms(1160)));
        assert!(c.can_serve(ms(1160)));
        assert!(todo.is_empty());
    }

    #[test]
    fn a_process_exit_fails_at_once() {
        let mut c = normal(policy());
        let mut todo = vec![];
        c.exited(ms(5), &mut todo);
        assert_eq!(c.fault, Some(Fault::Exited));
        assert_eq!(c.state(), State::Recovering);
        assert!(!c.can_serve(ms(5)));
    }

    #[test]
    fn backoff_doubles_to_its_cap_and_a_spent_budget_escalates() {
        let mut p = policy();
        p.restarts = 3;
        let mut c = normal(p);
        let mut todo = vec![];
        let mut now = ms(10);
        let mut delays = vec![];
        for _ in 0..3 {
            c.exited(now, &mut todo);
            let at = c.next_change(now).unwrap();
            delays.push(at - now);
            c.timeout(at, &mut todo);
            assert_eq!(todo.pop(), Some(Todo::Restart));
            c.restarted(at + ms(1), true, &mut todo);
            now = at + ms(2);
        }
        assert_eq!(
            delays,
            vec![ms(100), ms(150), ms(150)],
            "100, 200 capped at 150"
        );
        // The fourth failure within the window: no restart left, escalate.
        c.exited(now, &mut todo);
        assert_eq!(todo, vec![Todo::Escalate]);
        assert_eq!(c.state(), State::Failed);
        assert!(c.escalated(now));
        // Restarts older than the window no longer count.
        todo.clear();
        let mut c2 = normal(policy());
        c2.exited(ms(10), &mut todo);
        c2.timeout(ms(110), &mut todo);
        c2.restarted(ms(111), true, &mut todo);
        c2.exited(ms(20_000), &mut todo);
        assert_eq!(
            c2.next_change(ms(20_000)),
            Some(ms(20_100)),
            "the first backoff again"
        );
    }

    #[test]
    fn a_failed_start_counts_against_the_budget() {
        let mut p = policy();
        p.restarts = 1;
        p.escalate = false;
        let mut c = normal(p);
        let mut todo = vec![];
        c.exited(ms(10), &mut todo);
        c.timeout(ms(110), &mut todo);
        assert_eq!(todo, vec![Todo::Restart]);
        todo.clear();
        c.restarted(ms(115), false, &mut todo);
        assert_eq!(
            (c.state(), c.fault),
            (State::Failed, Some(Fault::StartFailed))
        );
        assert!(
            todo.is_empty(),
            "no budget, no escalation configured: it stays Failed"
        );
        assert_eq!(c.next_change(ms(115)), None);
    }

    #[test]
    fn a_critical_component_escalates_at_its_first_failure_and_still_restarts() {
        let mut p = policy();
        p.critical = true;
        let mut c = normal(p);
        let mut todo = vec![];
        c.check(ms(10), 0, false, &mut todo);
        c.check(ms(11), 0, false, &mut todo);
        assert_eq!(todo, vec![Todo::Escalate]);
        assert_eq!(c.state(), State::Recovering, "a restart is planned too");
    }

    #[test]
    fn a_flapping_check_never_serves_within_its_hold() {
        let mut c = normal(policy());
        let mut todo = vec![];
        let mut now = ms(10);
        // Fails, restarts, rises, and fails again before the hold ends, again and again.
        for _ in 0..2 {
            c.check(now, 0, false, &mut todo);
            c.check(now + ms(1), 0, false, &mut todo);
            let at = c.next_change(now).unwrap();
            c.timeout(at, &mut todo);
            c.restarted(at, true, &mut todo);
            for k in 1..=3 {
                c.check(at + ms(k), 0, true, &mut todo);
            }
            assert_eq!(c.state(), State::Normal);
            assert!(!c.can_serve(at + ms(500)));
            now = at + ms(500);
        }
        assert_eq!(todo.iter().filter(|t| **t == Todo::Restart).count(), 2);
    }
}
