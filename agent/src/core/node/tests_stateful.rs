//! Stateful resources on virtual time: an address opens only once its cold service runs where
//! it was mounted; a failback releases (stop, unmount) before the other node mounts; a dead
//! owner is fenced first (its lease does not stop its writes); a failed mount is undone and
//! the address goes elsewhere; and random schedules never mount one file system twice (the
//! simulation asserts it at every `Acquire`).
use std::time::Duration;

use super::super::sim::{self, Sim};
use super::tests::{after, ms, run_schedules, time_until};
use super::*;

const A0: ResId = 0;
/// Address 0's cold service: its resource and its component.
const DB: ResId = 2;
const DB_C: usize = 0;

fn pair(preempt: Option<Duration>, fence: bool) -> Sim {
    let mut s = Sim::with_config(sim::config_stateful(2, preempt, fence), 11);
    after(&mut s, ms(400));
    s
}

fn mounted(s: &Sim, a: ResId) -> Vec<NodeId> {
    (0..s.nodes.len())
        .filter(|&n| s.nodes[n].powered && s.nodes[n].mounted[a])
        .collect()
}

/// The position of the first trace line containing `what`.
fn first(s: &Sim, what: &str) -> usize {
    s.trace
        .iter()
        .position(|l| l.contains(what))
        .unwrap_or_else(|| panic!("no {what:?} in the trace\n{}", s.tail()))
}

#[test]
fn a_stateful_address_opens_where_it_is_mounted_once_its_cold_service_passes_its_checks() {
    let s = pair(None, true);
    assert_eq!((s.servers(A0), mounted(&s, A0)), (vec![0], vec![0]));
    assert_eq!((s.servers(1), mounted(&s, 1)), (vec![1], vec![1]));
    // The cold service runs where its address is served only.
    assert!(s.nodes[0].instances[DB_C].running && !s.nodes[1].instances[DB_C].running);
    assert_eq!(s.nodes[0].gates[DB], Gate::Open);
    // Acquired first, opened after its checks rose.
    assert!(
        first(&s, "n0 acquires a0") < first(&s, "n0 opens a0"),
        "{}",
        s.tail()
    );
    let c = s.nodes[1].core.as_ref().unwrap();
    assert_eq!(
        c.component(DB_C).state(),
        crate::core::component::State::Standby
    );
    assert_eq!(s.nodes[0].core.as_ref().unwrap().step(A0), Step::Serving);
}

#[test]
fn a_crashed_owner_is_fenced_before_its_file_system_is_mounted_elsewhere() {
    let mut s = pair(None, true);
    s.trace.clear();
    s.crash(0);
    time_until(&mut s, ms(200), |s| s.servers(A0) == vec![1]);
    assert_eq!(mounted(&s, A0), vec![1]);
    assert!(first(&s, "fence powers n0 off") < first(&s, "n1 acquires a0"));
    assert!(first(&s, "n1 acquires a0") < first(&s, "n1 opens a0"));
    // Told it is a takeover, in a newer epoch.
    let c = s.nodes[1].core.as_ref().unwrap();
    assert_eq!(c.epoch(A0), 2);
    assert_eq!(
        s.events_of(1, |e| matches!(
            e,
            Event::Acquiring {
                res: A0,
                takeover: true,
                ..
            }
        )),
        1
    );
}

#[test]
fn without_a_fence_a_dead_agents_stateful_address_is_not_taken_and_its_next_agent_releases_first() {
    let mut s = pair(None, false);
    s.kill_agent(0);
    after(&mut s, ms(300));
    // Its lease closed its gates; its service and mount live on: nothing is taken.
    assert_eq!(s.servers(A0), Vec::<NodeId>::new());
    assert_eq!(mounted(&s, A0), vec![0], "{}", s.tail());
    assert_eq!(
        s.events_of(1, |e| matches!(e, Event::FenceRequired { peer: 0, .. })),
        1,
        "said once\n{}",
        s.tail()
    );
    // Its next agent finds its gate lapsed: it stops and unmounts what is left before it
    // is ready, then the address is served again (by it: first in preference).
    s.trace.clear();
    s.start_agent(0);
    time_until(&mut s, ms(400), |s| s.servers(A0).len() == 1);
    assert!(
        first(&s, "n0 releases a0") < first(&s, "acquires a0"),
        "{}",
        s.tail()
    );
    assert_eq!(mounted(&s, A0), s.servers(A0));
}

#[test]
fn a_failback_stops_and_unmounts_before_the_preferred_node_mounts() {
    let mut s = pair(Some(ms(50)), true);
    s.crash(0);
    time_until(&mut s, ms(200), |s| s.servers(A0) == vec![1]);
    s.trace.clear();
    s.boot(0);
    time_until(&mut s, ms(1000), |s| s.servers(A0) == vec![0]);
    assert!(first(&s, "n1 closes a0") < first(&s, "n1 releases a0"));
    assert!(first(&s, "n1 releases a0") < first(&s, "n0 acquires a0"));
    assert_eq!(mounted(&s, A0), vec![0]);
    assert!(!s.nodes[1].instances[DB_C].running);
    // Handed over, not taken: no fence, and the service is told so.
    assert_eq!(
        s.events_of(0, |e| matches!(
            e,
            Event::Acquiring {
                res: A0,
                takeover: false,
                ..
            }
        )),
        1,
        "{}",
        s.tail()
    );
}

#[test]
fn a_failed_mount_is_undone_and_the_address_goes_to_a_node_that_can() {
    let mut s = pair(None, true);
    // Node 1 cannot start address 0's service: its takeover fails, is undone, and is
    // retried; once node 0 is back it ranks first.
    s.break_service(1, DB_C, true);
    s.crash(0);
    after(&mut s, ms(100));
    assert_eq!(s.servers(A0), Vec::<NodeId>::new(), "{}", s.tail());
    assert_eq!(mounted(&s, A0), Vec::<NodeId>::new());
    assert!(s.events_of(1, |e| matches!(e, Event::AcquireFailed { res: A0 })) >= 1);
    s.boot(0);
    time_until(&mut s, ms(3000), |s| s.servers(A0) == vec![0]);
    assert_eq!(mounted(&s, A0), vec![0]);
}

/// Random faults on stateful addresses, with and without fences and storage; the simulation
/// asserts at every `Acquire` that no other powered node has the file system mounted.
fn random_stateful_schedule(seed: u64) {
    use super::super::sim::Rng;
    let mut rng = Rng::new(seed);
    let nodes = if rng.chance(0.3) { 3 } else { 2 };
    let preempt = rng.chance(0.5).then(|| ms(20));
    let mut cfg = sim::config_stateful(nodes, preempt, rng.chance(0.7));
    if rng.chance(0.5) {
        cfg.disk_timeout = Some(ms(20 + rng.below(40)));
    }
    cfg.exit_takes_over = rng.chance(0.8);
    cfg.digest = cfg.digest_of();
    let mut s = Sim::with_config(cfg, seed);
    s.loss = [0.0, 0.01, 0.05][rng.below(3) as usize];
    s.fence_works = rng.chance(0.85);
    after(&mut s, ms(100));
    for _ in 0..12 {
        let n = rng.below(nodes as u64) as usize;
        let m = (n + 1 + rng.below(nodes as u64 - 1) as usize) % nodes;
        match rng.below(10) {
            0 => s.crash(n),
            1 => s.boot(n),
            2 if rng.chance(0.5) => s.kill_agent(n),
            2 => s.stop_agent(n),
            3 => {
                if s.nodes[n].powered && s.nodes[n].core.is_none() && s.nodes[n].frozen.is_none() {
                    s.start_agent(n)
                }
            }
            4 => {
                let frozen = s.nodes[n].frozen.is_none() && s.nodes[n].core.is_some();
                s.freeze_agent(n, frozen)
            }
            5 => s.set_lan(n, !s.nodes[n].lan_up),
            6 => {
                let cut = !s.cut[n][m][1];
                s.cut[n][m] = vec![cut, cut];
                s.cut[m][n] = vec![cut, cut];
            }
            7 => s.kill_service(n, rng.below(nodes as u64) as usize),
            8 => s.acquire_works = !s.acquire_works,
            _ => {
                let c = rng.below(nodes as u64) as usize;
                let broken = !s.nodes[n].instances[c].broken;
                s.break_service(n, c, broken)
            }
        }
        after(&mut s, Duration::from_micros(200 + rng.below(60_000)));
    }
    s.heal_all();
    for n in 0..nodes {
        for c in 0..nodes {
            s.break_service(n, c, false);
        }
    }
    after(&mut s, ms(12_000));
    for a in 0..nodes {
        let servers = s.servers(a);
        assert_eq!(
            servers.len(),
            1,
            "seed {seed}: a{a} served by {servers:?} after healing\n{}",
            s.tail()
        );
        assert_eq!(mounted(&s, a), servers, "seed {seed}\n{}", s.tail());
    }
}

#[test]
fn random_schedules_of_stateful_addresses_never_mount_one_file_system_twice() {
    run_schedules(0x57a7e, 300, random_stateful_schedule);
}

#[test]
fn a_restarted_standby_releases_what_it_may_have_left_without_announcing_or_holding_anything_up() {
    let mut s = pair(None, true);
    s.stop_agent(1);
    after(&mut s, ms(2));
    let (announced, t) = (s.announced.len(), s.trace.len());
    s.start_agent(1);
    after(&mut s, ms(200));
    // It released address 0 (in case a predecessor left it mounted) under a claim in no
    // epoch: never announced, never followed; n0 served on throughout.
    assert!(
        s.trace[t..].iter().any(|l| l.contains("n1 releases a0")),
        "{}",
        s.tail()
    );
    assert!(
        s.announced[announced..]
            .iter()
            .all(|&(_, n, a)| !(n == 1 && a == A0)),
        "{:?}",
        &s.announced[announced..]
    );
    assert_eq!((s.servers(A0), mounted(&s, A0)), (vec![0], vec![0]));
    assert!(s.nodes[1].core.as_ref().unwrap().is_ready());
}
