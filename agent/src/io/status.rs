//! `takeover status`: the agent's state table as one serde type, behind both the JSON
//! (`--json`, field names a stable interface for scripts) and the table people read.
use std::{collections::BTreeMap, time::Duration};

use serde::{Deserialize, Serialize};

use crate::core::{
    event::{path_name, resource_name},
    node::{Core, FenceState, Gate},
};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Status {
    pub node: String,
    pub ready: bool,
    pub lan: Lan,
    /// The digest of the configuration's shared part: the same on every node of a cluster.
    #[serde(default)]
    pub config_digest: String,
    /// The gates' lease (absent: gates are not leased).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease: Option<Lease>,
    /// This node's disk heartbeat (absent: no shared storage): `ok`, or `lost` (its last
    /// write failed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage: Option<String>,
    /// The peer whose fence order (through the storage area) holds this node off: it serves
    /// nothing until the order is withdrawn.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fenced_by_order_of: Option<String>,
    /// One per resource (a logical address, or a service on it).
    pub addresses: Vec<Resource>,
    /// The state management table: this node's services' instances, its LAN link and its
    /// dedicated line, with what the peers say of their own instances.
    #[serde(default)]
    pub components: Vec<Component>,
    pub peers: Vec<Peer>,
    pub received: Received,
    /// Datagrams refused, by reason.
    pub rejected: BTreeMap<String, u64>,
}

/// The data plane's lease on this node's open gates, as read when the status was taken.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Lease {
    /// Milliseconds it still runs (0: lapsed: leased gates are closed).
    pub remaining_ms: f64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Lan {
    pub interface: String,
    /// `up` or `down`.
    pub state: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Resource {
    pub address: String,
    /// `tcp/80`, `udp/53`, ... for a service; absent for a whole address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    pub owner: String,
    pub preference: Vec<String>,
    /// `open`, `closed`, `forward to NODE`, `receive from NODE`.
    pub gate: String,
    pub served_by: Option<String>,
    pub epoch: u64,
    /// Something an operator must know (a service whose instance failed with no other to
    /// take its traffic).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    /// A stateful address's step here: `idle`, `acquiring`, `starting`, `serving`,
    /// `releasing`, `release failed`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Component {
    pub name: String,
    /// `service`, `lan` or `line`.
    pub kind: String,
    /// `normal`, `failed`, `recovering`, `standby`.
    pub state: String,
    pub since_ms_ago: Option<f64>,
    /// Why it last failed (`exited`, `check1`, `start_failed`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fault: Option<String>,
    /// Its traffic may be served here now (normal, past the hold).
    #[serde(default)]
    pub can_serve: bool,
    #[serde(default)]
    pub escalated: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    #[serde(default)]
    pub restarts: u64,
    /// The last failing check's or start's reason, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Per peer: the state of its instance, as its heartbeats say.
    #[serde(default)]
    pub peers: BTreeMap<String, String>,
    /// What the data plane does by itself the moment its process exits (armed on the exit
    /// tracepoint): `forward to NODE`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_plan: Option<String>,
}

/// What the shell knows of an instance beyond the core's state.
#[derive(Clone, Debug, Default)]
pub struct InstanceNotes {
    pub pid: Option<u32>,
    /// Per check: the last result (None: not run yet).
    pub checks: Vec<Option<Result<(), String>>>,
    /// The last start or restart error.
    pub error: Option<String>,
    pub restarts: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Peer {
    pub name: String,
    /// `alive` or `dead`.
    pub state: String,
    pub since_ms_ago: Option<f64>,
    /// `none`, `pending`, `fenced`, `failed`.
    pub fence: String,
    /// `agrees`, or why its summaries cannot be read (nothing moves while it lasts).
    #[serde(default)]
    pub config: String,
    /// The wire version this node writes to it.
    #[serde(default)]
    pub wire_version: u8,
    pub paths: Vec<PathStatus>,
    /// Its disk heartbeat (absent: no shared storage).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk: Option<PeerDisk>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PeerDisk {
    /// The newest generation read (0: never written).
    pub generation: u64,
    /// It moved within the storage timeout, read after read (or this node cannot tell).
    pub fresh: bool,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PathStatus {
    /// `dedicated` or `lan`.
    pub path: String,
    pub last_heard_ms_ago: Option<f64>,
    pub rtt_ms: Option<f64>,
}

/// Datagrams the agent has read from the peers, by where it found them: the gates' ring
/// (periodic heartbeats, taken off the wire by XDP) or its sockets (urgent heartbeats, the
/// peers' kernels' answers, and whatever the ring did not take).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Received {
    pub gate: u64,
    pub socket: u64,
}

fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e6).round() / 1e3
}

impl Status {
    pub fn of(
        core: &Core,
        now: Duration,
        lan: &str,
        received: &Received,
        notes: &[InstanceNotes],
    ) -> Self {
        let cfg = core.config();
        let name = |n: usize| cfg.nodes[n].clone();
        let addresses = cfg
            .resources
            .iter()
            .enumerate()
            .map(|(a, spec)| Resource {
                address: spec.ip.to_string(),
                service: spec.service.map(|_| {
                    let full = resource_name(cfg, a);
                    full.split_once(' ')
                        .map_or(full.clone(), |(_, s)| s.to_string())
                }),
                owner: name(spec.preference[0]),
                preference: spec.preference.iter().map(|&n| name(n)).collect(),
                gate: core.gate(a).describe(cfg),
                // A service is served where its traffic goes: here, the peer it is handed
                // to, or its address's server; in its address's epoch.
                served_by: match (spec.service, core.gate(a)) {
                    (None, _) => core.server(a),
                    (Some(_), Gate::Open) => Some(cfg.me),
                    (Some(_), Gate::Forward(p)) => Some(p),
                    (Some(sv), _) => core.server(sv.address),
                }
                .map(name),
                epoch: core.epoch(spec.service.map_or(a, |sv| sv.address)),
                note: core
                    .stranded(a)
                    .then(|| "its instance here failed and no peer's can serve: stays".into()),
                step: spec.stateful.then(|| core.step(a).name().to_string()),
            })
            .collect();
        let components = components(core, now, lan, notes);
        let peers = (0..cfg.nodes.len())
            .filter(|&p| p != cfg.me)
            .map(|p| Peer {
                name: name(p),
                state: if core.peer_alive(p) { "alive" } else { "dead" }.into(),
                since_ms_ago: core.peer_since(p).map(|s| ms(now.saturating_sub(s))),
                fence: match core.fence_state(p) {
                    FenceState::None => "none",
                    FenceState::Pending => "pending",
                    FenceState::Fenced => "fenced",
                    FenceState::Failed(_) => "failed",
                    FenceState::Waiting => "waiting for its lease",
                    FenceState::Lapsed => "lease lapsed",
                }
                .into(),
                config: core
                    .peer_mismatch(p)
                    .map_or("agrees".into(), |m| format!("MISMATCH: {}", m.as_str())),
                wire_version: core.peer_wire_version(p),
                paths: core
                    .path_status(p)
                    .iter()
                    .enumerate()
                    .map(|(i, (heard, rtt))| PathStatus {
                        path: path_name(cfg, i).into(),
                        last_heard_ms_ago: heard.map(|h| ms(now.saturating_sub(h))),
                        rtt_ms: rtt.map(ms),
                    })
                    .collect(),
                disk: core
                    .peer_disk(p)
                    .map(|(generation, fresh)| PeerDisk { generation, fresh }),
            })
            .collect();
        Status {
            node: name(cfg.me),
            ready: core.is_ready(),
            lan: Lan {
                interface: lan.into(),
                state: if core.lan_link() { "up" } else { "down" }.into(),
            },
            config_digest: cfg.digest.iter().map(|b| format!("{b:02x}")).collect(),
            lease: None,
            storage: core
                .storage_ok()
                .map(|ok| if ok { "ok" } else { "lost" }.into()),
            fenced_by_order_of: core.fenced_by_order().map(name),
            addresses,
            components,
            peers,
            received: *received,
            rejected: core
                .rejected()
                .0
                .iter()
                .map(|(k, n)| (k.to_string(), *n))
                .collect(),
        }
    }

    /// The table people read.
    pub fn render(&self) -> String {
        let mut out = format!(
            "node {}  ready {}  LAN {} {}  configuration {}{}\n",
            self.node,
            self.ready,
            self.lan.interface,
            self.lan.state,
            self.config_digest,
            match &self.lease {
                Some(l) if l.remaining_ms > 0.0 => format!("  lease {:.1} ms", l.remaining_ms),
                Some(_) => "  lease LAPSED (leased gates closed)".into(),
                None => String::new(),
            }
        );
        if let Some(st) = &self.storage {
            out.pop();
            out += &format!("  storage {}\n", if st == "ok" { "ok" } else { "LOST" });
        }
        if let Some(by) = &self.fenced_by_order_of {
            out += &format!(
                "FENCED BY ORDER of {by} (through the storage area): serving nothing until {by} withdraws it\n"
            );
        }
        let mut addresses =
            vec![["ADDRESS", "OWNER", "GATE", "SERVED BY", "EPOCH"].map(String::from)];
        for a in &self.addresses {
            let address = match &a.service {
                Some(s) => format!("{} {s}", a.address),
                None => a.address.clone(),
            };
            addresses.push([
                address,
                a.owner.clone(),
                a.gate.clone(),
                a.served_by.clone().unwrap_or_else(|| "-".into()),
                a.epoch.to_string(),
            ]);
        }
        let mut components =
            vec![["COMPONENT", "KIND", "STATE", "SINCE", "PEERS", "DETAIL"].map(String::from)];
        for c in &self.components {
            let mut detail = Vec::new();
            if let Some(p) = c.pid {
                detail.push(format!("pid {p}"));
            }
            if c.kind == "service" && c.state == "normal" && !c.can_serve {
                detail.push("held (recovered lately)".into());
            }
            if c.escalated {
                detail.push("escalated".into());
            }
            if let Some(f) = &c.fault {
                detail.push(format!("last fault {f}"));
            }
            if c.restarts > 0 {
                detail.push(format!("{} restart(s)", c.restarts));
            }
            if let Some(e) = &c.error {
                detail.push(e.clone());
            }
            if let Some(p) = &c.exit_plan {
                detail.push(format!("on exit: {p}"));
            }
            let peers: Vec<String> = c.peers.iter().map(|(n, s)| format!("{n}: {s}")).collect();
            components.push([
                c.name.clone(),
                c.kind.clone(),
                c.state.clone(),
                c.since_ms_ago
                    .map_or("-".into(), |x| format!("{:.1} s", x / 1e3)),
                if peers.is_empty() {
                    "-".into()
                } else {
                    peers.join(", ")
                },
                detail.join("; "),
            ]);
        }
        let mut peers =
            vec![["PEER", "STATE", "FENCE", "PATH", "LAST HEARD", "RTT"].map(String::from)];
        for p in &self.peers {
            for (i, path) in p.paths.iter().enumerate() {
                // The peer's own columns on its first path's row only.
                let own = |s: &str| if i == 0 { s.to_string() } else { String::new() };
                peers.push([
                    own(&p.name),
                    own(&p.state),
                    own(&p.fence),
                    path.path.clone(),
                    path.last_heard_ms_ago
                        .map_or("never".into(), |x| format!("{x:.1} ms")),
                    path.rtt_ms.map_or("-".into(), |x| format!("{x:.3} ms")),
                ]);
            }
            if let Some(d) = &p.disk {
                peers.push([
                    String::new(),
                    String::new(),
                    String::new(),
                    "disk".into(),
                    format!(
                        "{} (#{})",
                        if d.fresh { "fresh" } else { "STALE" },
                        d.generation
                    ),
                    "-".into(),
                ]);
            }
        }
        out.push('\n');
        out.push_str(&table(&addresses));
        for a in &self.addresses {
            if let Some(n) = &a.note {
                let what = match &a.service {
                    Some(s) => format!("{} {s}", a.address),
                    None => a.address.clone(),
                };
                out.push_str(&format!("{what}: {n}\n"));
            }
            if let Some(step) = a.step.as_deref().filter(|s| *s != "idle") {
                out.push_str(&format!("{}: stateful, {step} here\n", a.address));
            }
        }
        if !self.components.is_empty() {
            out.push('\n');
            out.push_str(&table(&components));
        }
        out.push('\n');
        out.push_str(&table(&peers));
        for p in &self.peers {
            if p.config != "agrees" && !p.config.is_empty() {
                out.push_str(&format!("\npeer {}: configuration {}\n", p.name, p.config));
            }
            if p.wire_version != 0 && p.wire_version != crate::core::wire::VERSION {
                out.push_str(&format!(
                    "peer {}: spoken to in wire version {} (it reads nothing newer)\n",
                    p.name, p.wire_version
                ));
            }
        }
        let rejected: Vec<String> = self
            .rejected
            .iter()
            .map(|(k, n)| format!("{k} {n}"))
            .collect();
        out.push_str(&format!(
            "\ndatagrams read: {} from the gates' ring, {} from sockets\n",
            self.received.gate, self.received.socket
        ));
        out.push_str(&format!(
            "rejected datagrams: {}\n",
            if rejected.is_empty() {
                "none".into()
            } else {
                rejected.join(", ")
            }
        ));
        out
    }
}

/// The component table: each service here (with its peers' instances), the LAN link, the
/// dedicated line.
fn components(core: &Core, now: Duration, lan: &str, notes: &[InstanceNotes]) -> Vec<Component> {
    let cfg = core.config();
    let others: Vec<usize> = (0..cfg.nodes.len()).filter(|&p| p != cfg.me).collect();
    let mut out = Vec::new();
    for (c, spec) in cfg.components.iter().enumerate() {
        let comp = core.component(c);
        let note = notes.get(c).cloned().unwrap_or_default();
        // Its peers' instances, by the first of its resources (all say the same).
        let first = cfg
            .resources
            .iter()
            .position(|r| r.service.is_some_and(|s| s.component == c));
        let peers = others
            .iter()
            .map(|&p| {
                let h = first.and_then(|s| core.instance(p, s));
                let state = h.map_or("unknown".to_string(), |h| {
                    let serve = if h.can_serve { "" } else { ", cannot serve" };
                    format!("{}{serve}", h.state.name())
                });
                (cfg.nodes[p].clone(), state)
            })
            .collect();
        let failing = note.checks.iter().enumerate().find_map(|(i, r)| match r {
            Some(Err(e)) => Some(format!("check {}: {e}", i + 1)),
            _ => None,
        });
        out.push(Component {
            name: spec.name.clone(),
            kind: "service".into(),
            state: if spec.here {
                comp.state().name().into()
            } else {
                "standby".into()
            },
            since_ms_ago: spec.here.then(|| ms(now.saturating_sub(comp.since()))),
            fault: comp.fault.map(|f| f.kind()),
            can_serve: spec.here && comp.can_serve(now),
            escalated: comp.escalated(now),
            pid: note.pid,
            restarts: note.restarts,
            error: note.error.clone().or(failing),
            peers,
            exit_plan: None,
        });
    }
    let link = |name: String, kind: &str, up: bool| Component {
        name,
        kind: kind.into(),
        state: if up { "normal" } else { "failed" }.into(),
        since_ms_ago: None,
        fault: None,
        can_serve: up,
        escalated: false,
        pid: None,
        restarts: 0,
        error: None,
        peers: BTreeMap::new(),
        exit_plan: None,
    };
    out.push(link(lan.to_string(), "lan", core.lan_link()));
    if cfg.paths > 1 {
        for &p in &others {
            out.push(link(
                format!("line to {}", cfg.nodes[p]),
                "line",
                !core.line_dark(p),
            ));
        }
    }
    out
}

/// Rows as aligned columns, each as wide as its widest cell (names and gate states have no
/// fixed length), two spaces apart.
pub fn table<const N: usize>(rows: &[[String; N]]) -> String {
    let widths: Vec<usize> = (0..N)
        .map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for r in rows {
        let cells: Vec<String> = r
            .iter()
            .zip(&widths)
            .map(|(cell, w)| format!("{cell:<w$}"))
            .collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn table_of<'a>(text: &'a str, first: &str) -> Vec<&'a str> {
        text.lines()
            .skip_while(|l| !l.starts_with(first))
            .take_while(|l| !l.is_empty())
            .collect()
    }

    /// Every row has `cells[i]` where the header has `columns[i]`, after a space.
    fn aligned(rows: &[&str], columns: &[&str], cells: &[&[&str]]) {
        let at: Vec<usize> = columns.iter().map(|c| rows[0].find(c).unwrap()).collect();
        for (row, want) in rows[1..].iter().zip(cells) {
            for (&i, cell) in at.iter().zip(*want) {
                assert!(
                    row[i..].starts_with(cell) && (i == 0 || &row[i - 1..i] == " "),
                    "{cell:?} not at column {i}:\n{}",
                    rows.join("\n")
                );
            }
        }
    }

    #[test]
    fn status_columns_line_up_whatever_the_names() {
        let v = json!({
            "node": "a-rather-long-node-name", "ready": true,
            "lan": {"interface": "lan", "state": "up"},
            "addresses": [
                {"address": "2001:db8:1234:5678:9abc:def0:1234:5678", "owner": "a-rather-long-node-name", "preference": [],
                 "gate": "forward to another-long-node-name", "served_by": "another-long-node-name", "epoch": 35},
                {"address": "10.0.0.1", "owner": "b", "preference": [], "gate": "receive from a-rather-long-node-name",
                 "served_by": null, "epoch": 0},
            ],
            "peers": [{"name": "another-long-node-name", "state": "alive", "since_ms_ago": 1.0, "fence": "none", "paths": [
                {"path": "dedicated", "last_heard_ms_ago": 12345.6, "rtt_ms": 0.021},
                {"path": "lan", "last_heard_ms_ago": null, "rtt_ms": null},
            ]}],
            "received": {"gate": 1, "socket": 2}, "rejected": {},
        });
        let text = serde_json::from_value::<Status>(v).unwrap().render();
        aligned(
            &table_of(&text, "ADDRESS"),
            &["ADDRESS", "OWNER", "GATE", "SERVED BY", "EPOCH"],
            &[
                &[
                    "2001:db8:1234:5678:9abc:def0:1234:5678",
                    "a-rather-long-node-name",
                    "forward to another-long-node-name",
                    "another-long-node-name",
                    "35",
                ],
                &[
                    "10.0.0.1",
                    "b",
                    "receive from a-rather-long-node-name",
                    "-",
                    "0",
                ],
            ],
        );
        aligned(
            &table_of(&text, "PEER"),
            &["PEER", "STATE", "FENCE", "PATH", "LAST HEARD", "RTT"],
            &[
                &[
                    "another-long-node-name",
                    "alive",
                    "none",
                    "dedicated",
                    "12345.6 ms",
                    "0.021 ms",
                ],
                &["", "", "", "lan", "never", "-"],
            ],
        );
    }

    #[test]
    fn the_json_and_the_table_are_one_status() {
        use crate::core::sim::Sim;
        let mut s = Sim::new(2, Duration::from_millis(1), None, 1);
        let t = s.now + Duration::from_millis(50);
        s.run_until(t);
        let core = s.nodes[0].core.as_ref().unwrap();
        let st = Status::of(core, s.now, "lan", &Received { gate: 3, socket: 4 }, &[]);
        let json = serde_json::to_string(&st).unwrap();
        assert_eq!(serde_json::from_str::<Status>(&json).unwrap(), st);
        assert_eq!(st.peers[0].config, "agrees");
        assert_eq!(st.addresses[0].gate, "open");
        let text = st.render();
        assert!(text.contains("10.77.0.100") && text.contains(&st.config_digest));
    }

    #[test]
    fn the_component_table_shows_each_service_its_peers_and_the_links() {
        use crate::core::sim::{self, Sim};
        let ms = Duration::from_millis;
        let cfg =
            sim::config_with_services(2, ms(1), None, 1, sim::service_policy(3, false, false));
        let mut s = Sim::with_config(cfg, 1);
        let t = s.now + ms(100);
        s.run_until(t);
        s.kill_service(0, 0);
        let core = s.nodes[0].core.as_ref().unwrap();
        let notes = [
            InstanceNotes {
                pid: Some(42),
                checks: vec![Some(Err("connection refused".into()))],
                ..InstanceNotes::default()
            },
            InstanceNotes::default(),
        ];
        let st = Status::of(core, s.now, "lan", &Received::default(), &notes);
        let json = serde_json::to_string(&st).unwrap();
        assert_eq!(serde_json::from_str::<Status>(&json).unwrap(), st);
        let web = &st.components[0];
        assert_eq!((web.name.as_str(), web.kind.as_str()), ("s0.0", "service"));
        assert_eq!(web.state, "recovering");
        assert_eq!(web.fault.as_deref(), Some("exited"));
        assert_eq!(web.peers["n1"], "normal");
        let kinds: Vec<&str> = st.components.iter().map(|c| c.kind.as_str()).collect();
        assert_eq!(kinds, ["service", "service", "lan", "line"]);
        // Its traffic goes to n1's instance; the address stays.
        let svc = st
            .addresses
            .iter()
            .find(|a| a.service.as_deref() == Some("tcp/80") && a.address == "10.77.0.100")
            .unwrap();
        assert_eq!(svc.gate, "forward to n1");
        assert_eq!(svc.served_by.as_deref(), Some("n1"));
        assert_eq!(svc.epoch, st.addresses[0].epoch);
        let text = st.render();
        let rows = table_of(&text, "COMPONENT");
        assert!(
            rows[1].starts_with("s0.0") && rows[1].contains("recovering"),
            "{text}"
        );
        assert!(
            rows[1].contains("n1: normal") && rows[1].contains("pid 42"),
            "{text}"
        );
        assert!(rows[1].contains("check 1: connection refused"), "{text}");
        assert!(rows.iter().any(|r| r.starts_with("line to n1")), "{text}");
    }
}
