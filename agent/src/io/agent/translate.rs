//! The configuration as the core and the data plane see it.
use std::{net::SocketAddr, time::Duration};

use crate::{
    config::{service::Service, AgentExit, Config},
    core::{
        component::Policy,
        node::{ComponentSpec, CoreConfig, ResourceSpec, ServiceSpec},
    },
    dataplane::{target, Target},
};

/// The core's view of the configuration: node names sorted (votes name nodes by index, so
/// every node must number them alike), and each peer's address per path.
pub fn core_config(cfg: &Config, key: Vec<u8>) -> (CoreConfig, Vec<Vec<SocketAddr>>) {
    let mut names = cfg.node_names();
    names.sort();
    let index = |n: &str| names.iter().position(|x| x == n).expect("validated name");
    let mut paths = vec![Vec::new(); names.len()];
    for p in &cfg.peers {
        paths[index(&p.name)] = p.paths.clone();
    }
    let mut resources: Vec<ResourceSpec> = cfg
        .addresses
        .iter()
        .map(|a| ResourceSpec {
            ip: a.ip,
            prefix: a.prefix,
            service: None,
            stateful: cfg
                .services
                .iter()
                .any(|s| s.cold && s.addresses.contains(&a.ip)),
            preference: a.preference.iter().map(|n| index(n)).collect(),
        })
        .collect();
    // Each service on each of its addresses is a resource of its own, after the addresses.
    let me = cfg.node.name.as_str();
    let mut components = Vec::new();
    for (c, svc) in cfg.services.iter().enumerate() {
        let mut here = false;
        for ip in &svc.addresses {
            let a = cfg
                .addresses
                .iter()
                .position(|x| x.ip == *ip)
                .expect("validated: a service's address is an [[address]]");
            here |= cfg.addresses[a].preference.iter().any(|n| n == me);
            resources.push(ResourceSpec {
                service: Some(ServiceSpec {
                    proto: svc.proto.number(),
                    first_port: svc.ports.0,
                    last_port: svc.ports.1,
                    address: a,
                    component: c,
                }),
                ..resources[a].clone()
            });
        }
        components.push(ComponentSpec {
            name: svc.name.clone(),
            policy: policy(svc),
            here,
            cold: svc.cold,
        });
    }
    let mut core = CoreConfig {
        me: index(&cfg.node.name),
        paths: cfg.node.listen.len(),
        resources,
        components,
        interval: cfg.heartbeat.interval,
        misses: cfg.heartbeat.misses,
        lan_every: cfg.heartbeat.lan_every,
        preempt: cfg.preempt.enabled.then_some(cfg.preempt.delay),
        fence_retry: Duration::from_secs(1),
        fence: !cfg.fence.command.is_empty(),
        lease: cfg.lease.enabled,
        disk_timeout: cfg.storage.as_ref().map(|s| s.timeout),
        storage_hand_over: cfg
            .storage
            .as_ref()
            .is_some_and(|s| s.on_lost == crate::config::OnStorageLost::HandOver),
        startup_grace: cfg.heartbeat.startup_grace.max(cfg.heartbeat.dead_after()),
        restart_grace: cfg.heartbeat.restart_grace.max(cfg.heartbeat.dead_after()),
        exit_takes_over: cfg.heartbeat.agent_exit == AgentExit::Takeover,
        // A dark line: probe the peers' kernels twice an interval; an interval of silence
        // from kernel and agent confirms, if it begins within the dead time of the line going
        // dark. LAN stalls of 2-7 ms happen now and then on the benchmark machines under load
        // (soaks with the line down): a short window open all the while the line is dark
        // fenced live peers; one open only around the carrier drop is a small exposure.
        probe_interval: cfg.heartbeat.interval / 2,
        probe_confirm: cfg.heartbeat.interval,
        forward_for: cfg.announce.forward_for,
        digest: [0; 8],
        emulate_v2: false,
        emulate_v3: false,
        key,
        nodes: names,
    };
    core.digest = core.digest_of();
    (core, paths)
}

/// How a service's instance here is checked and recovered.
fn policy(svc: &Service) -> Policy {
    Policy {
        checks: svc.checks.iter().map(|c| (c.fall, c.rise)).collect(),
        restarts: svc.recovery.restarts,
        window: svc.recovery.window,
        backoff: svc.recovery.backoff,
        max_backoff: svc.recovery.max_backoff,
        escalate: svc.recovery.escalate,
        critical: svc.critical,
        hold: svc.recovery.hold,
    }
}

/// The data plane's entries of each resource: one for an address, one per port for a
/// service.
pub fn targets(core: &CoreConfig) -> Vec<Vec<Target>> {
    core.resources
        .iter()
        .map(|r| match r.service {
            None => vec![Target::new(r.ip, None)],
            Some(s) => {
                let proto = if s.proto == target::Proto::Udp.number() {
                    target::Proto::Udp
                } else {
                    target::Proto::Tcp
                };
                (s.first_port..=s.last_port)
                    .map(|port| Target::new(r.ip, Some(target::Service { proto, port })))
                    .collect()
            }
        })
        .collect()
}
