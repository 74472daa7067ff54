//! Services on virtual time (patent figs 15 to 17): a failed instance's traffic goes to a
//! peer's while the address stays; it comes back after a restart and the hold; escalation
//! moves the whole address; then randomized schedules of service and node faults against
//! the per-resource invariants.
use std::time::Duration;

use super::super::{
    component::{Policy, State},
    sim::{self, Rng, Sim},
};
use super::tests::{after, ms, run_schedules, time_until, MS};
use super::*;

/// Two nodes, address 0 on node 0 with services s0.0 (resource 2) and s0.1 (resource 3),
/// address 1 on node 1 with s1.0 (4) and s1.1 (5); settled (the announcements after the
/// first opening done), every instance Normal.
fn pair_with(policy: Policy) -> Sim {
    let cfg = sim::config_with_services(2, MS, None, 2, policy);
    let mut s = Sim::with_config(cfg, 7);
    after(&mut s, ms(400));
    for n in 0..2 {
        let c = s.nodes[n].core.as_ref().unwrap();
        for k in 0..4 {
            assert_eq!(c.component(k).state(), State::Normal, "{}", s.tail());
        }
    }
    s
}

fn gate(s: &Sim, n: NodeId, r: ResId) -> Gate {
    s.nodes[n].gates[r]
}

const A0: ResId = 0;
const WEB: ResId = 2;
const OTHER: ResId = 3;
/// Components of WEB and OTHER.
const WEB_C: usize = 0;

#[test]
fn a_killed_service_goes_to_the_peer_alone_and_comes_back_after_its_restart() {
    let mut s = pair_with(sim::service_policy(3, true, false));
    assert_eq!(
        (gate(&s, 0, A0), gate(&s, 0, WEB), gate(&s, 1, WEB)),
        (Gate::Open, Gate::Open, Gate::Receive(0)),
        "{}",
        s.tail()
    );
    let announced = s.announced.len();
    s.kill_service(0, WEB_C);
    // At once (the exit is an input): forwarded to node 1, which was already receiving.
    assert_eq!(gate(&s, 0, WEB), Gate::Forward(1), "{}", s.tail());
    assert_eq!(gate(&s, 1, WEB), Gate::Receive(0));
    // The address and the other service stay; nothing is announced.
    assert_eq!(
        (gate(&s, 0, A0), gate(&s, 0, OTHER)),
        (Gate::Open, Gate::Open)
    );
    assert_eq!(s.servers(A0), vec![0]);
    // Restarted after its backoff, Normal after rise, back after the hold.
    let back = time_until(&mut s, ms(200), |s| gate(s, 0, WEB) == Gate::Open);
    assert!(
        back >= ms(30),
        "back before the hold: {back:?}\n{}",
        s.tail()
    );
    assert_eq!(s.announced.len(), announced, "nothing announced");
    assert_eq!(gate(&s, 1, WEB), Gate::Receive(0));
    assert!(!s.black_hole, "{}", s.tail());
    let c = s.nodes[0].core.as_ref().unwrap();
    assert_eq!(c.component(WEB_C).state(), State::Normal);
}

#[test]
fn a_hung_service_is_caught_by_its_check() {
    let mut s = pair_with(sim::service_policy(3, true, false));
    s.hang_service(0, WEB_C, true);
    // fall 2 at one check per 2 ms.
    let took = time_until(&mut s, ms(20), |s| gate(s, 0, WEB) == Gate::Forward(1));
    assert!(took <= s.check_every * 3, "{took:?}");
    assert_eq!(gate(&s, 0, OTHER), Gate::Open);
    // The restart ends the hang.
    time_until(&mut s, ms(200), |s| gate(s, 0, WEB) == Gate::Open);
}

#[test]
fn with_the_peers_instance_down_too_nothing_moves_and_that_is_said() {
    let mut s = pair_with(sim::service_policy(0, false, false));
    s.kill_service(1, WEB_C);
    after(&mut s, ms(5));
    // Node 1 no longer receives it (its instance cannot serve).
    assert_eq!(gate(&s, 1, WEB), Gate::Closed, "{}", s.tail());
    s.kill_service(0, WEB_C);
    after(&mut s, ms(5));
    assert_eq!(gate(&s, 0, WEB), Gate::Open, "{}", s.tail());
    assert!(s.nodes[0].core.as_ref().unwrap().stranded(WEB));
    assert_eq!(
        s.events_of(0, |e| matches!(e, Event::NoInstance { res: WEB })),
        1
    );
    assert_eq!(s.servers(A0), vec![0], "the address stays");
}

#[test]
fn a_service_that_cannot_recover_escalates_to_a_takeover_of_the_whole_address() {
    let mut s = pair_with(sim::service_policy(1, true, false));
    s.break_service(0, WEB_C, true);
    s.kill_service(0, WEB_C);
    assert_eq!(gate(&s, 0, WEB), Gate::Forward(1));
    // One restart fails: the budget is spent, the address goes over, lossless.
    time_until(&mut s, ms(100), |s| s.servers(A0) == vec![1]);
    assert_eq!(
        s.events_of(0, |e| matches!(e, Event::Escalated { component: WEB_C })),
        1
    );
    // On node 1: the address and both its services open; node 0 forwards what still
    // arrives, then closes; the other service, healthy on 0, is served on 1 now.
    assert_eq!(
        (gate(&s, 1, WEB), gate(&s, 1, OTHER)),
        (Gate::Open, Gate::Open),
        "{}",
        s.tail()
    );
    assert!(!s.black_hole, "{}", s.tail());
    after(&mut s, ms(400));
    assert_eq!(gate(&s, 0, A0), Gate::Closed, "{}", s.tail());
    // Node 0 still has a healthy OTHER: it stands by to receive it.
    assert_eq!(gate(&s, 0, OTHER), Gate::Receive(1));
    assert_eq!(gate(&s, 0, WEB), Gate::Closed);
}

#[test]
fn a_critical_service_takes_the_address_over_at_its_first_failure() {
    let mut s = pair_with(sim::service_policy(3, false, true));
    s.kill_service(0, WEB_C);
    time_until(&mut s, ms(50), |s| s.servers(A0) == vec![1]);
    assert!(!s.black_hole, "{}", s.tail());
    // It recovers at home (restarted), but the address stays where it went (no preempt).
    after(&mut s, ms(200));
    assert_eq!(s.servers(A0), vec![1]);
    assert_eq!(gate(&s, 0, WEB), Gate::Receive(1));
}

#[test]
fn a_flapping_service_does_not_ping_pong() {
    let mut s = pair_with(sim::service_policy(100, false, false));
    let changes = |s: &Sim| s.events_of(0, |e| matches!(e, Event::GateChanged { res: WEB, .. }));
    let before = changes(&s);
    // Killed every 20 ms, less than its hold (30 ms) after each restart: its traffic stays
    // with the peer the whole time.
    for _ in 0..10 {
        s.kill_service(0, WEB_C);
        after(&mut s, ms(20));
    }
    assert_eq!(changes(&s) - before, 1, "{}", s.tail());
    assert_eq!(gate(&s, 0, WEB), Gate::Forward(1));
    time_until(&mut s, ms(300), |s| gate(s, 0, WEB) == Gate::Open);
}

#[test]
fn the_peers_service_fault_is_heard_before_it_is_forwarded_there() {
    let mut s = pair_with(sim::service_policy(3, true, false));
    s.hang_service(1, WEB_C, true);
    after(&mut s, ms(10));
    s.kill_service(0, WEB_C);
    after(&mut s, MS);
    // Node 1's instance is down: nothing forwarded to it.
    assert_eq!(gate(&s, 0, WEB), Gate::Open, "{}", s.tail());
}

#[test]
fn a_node_crash_with_a_service_forwarded_to_it_brings_the_service_home() {
    let mut s = pair_with(sim::service_policy(0, false, false));
    s.kill_service(0, WEB_C);
    assert_eq!(gate(&s, 0, WEB), Gate::Forward(1));
    s.crash(1);
    time_until(&mut s, ms(50), |s| gate(s, 0, WEB) == Gate::Open);
    assert!(s.nodes[0].core.as_ref().unwrap().stranded(WEB));
}

fn random_schedule(seed: u64) {
    let mut rng = Rng::new(seed);
    let preempt = rng.chance(0.5).then(|| ms(20 + rng.below(80)));
    let policy = sim::service_policy(rng.below(3) as u32, rng.chance(0.6), rng.chance(0.2));
    let cfg = sim::config_with_services(2, MS, preempt, 2, policy);
    let mut s = Sim::with_config(cfg, seed);
    if rng.chance(0.2) {
        let mut old = s.cfg.clone();
        old.emulate_v3 = true;
        s.node_configs[1] = Some(old);
        s.stop_agent(1);
        s.start_agent(1);
    }
    s.loss = [0.0, 0.01, 0.05][rng.below(3) as usize];
    s.jitter = Duration::from_micros(rng.below(300));
    after(&mut s, ms(20));
    let components = s.cfg.components.len();
    for _ in 0..30 {
        let n = rng.below(2) as usize;
        let c = rng.below(components as u64) as usize;
        match rng.below(10) {
            0..=3 => s.kill_service(n, c),
            4 | 5 => {
                let hung = !s.nodes[n].instances[c].hung;
                s.hang_service(n, c, hung)
            }
            6 => {
                let broken = !s.nodes[n].instances[c].broken;
                s.break_service(n, c, broken)
            }
            7 if s.nodes.iter().all(|x| x.powered) => s.crash(n),
            7 => s.boot(n),
            8 => s.set_lan(n, !s.nodes[n].lan_up),
            _ => {}
        }
        after(&mut s, ms(1 + rng.below(40)));
    }
    // Healed: every instance works, every node up; each service ends up served by the
    // node that serves its address, and nothing forwards.
    for n in 0..2 {
        s.boot(n);
        if !s.nodes[n].lan_up {
            s.set_lan(n, true);
        }
        for c in 0..components {
            s.break_service(n, c, false);
            if s.nodes[n].instances[c].hung {
                s.hang_service(n, c, false);
            }
            if !s.nodes[n].instances[c].running {
                s.revive_service(n, c);
            }
        }
    }
    after(&mut s, ms(1500));
    for (r, spec) in s.cfg.resources.clone().iter().enumerate() {
        let Some(sv) = spec.service else {
            continue;
        };
        let servers = s.servers(sv.address);
        assert_eq!(
            servers.len(),
            1,
            "seed {seed}: a{}\n{}",
            sv.address,
            s.tail()
        );
        let owner = servers[0];
        assert_eq!(
            gate(&s, owner, r),
            Gate::Open,
            "seed {seed}: a{r} on its address's server n{owner}\n{}",
            s.tail()
        );
    }
}

#[test]
fn random_service_fault_schedules_keep_the_invariants() {
    run_schedules(0x5e41, 300, random_schedule);
}
