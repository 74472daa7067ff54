//! A real database taken over and given back (issue 12; patent fig. 4, 0039, 0042):
//! PostgreSQL 15 from Debian, its data on an ext4 file system on a shared disk (a loop device
//! per host over one file), run cold by the agents of `a` and `b` (each in mount and IPC
//! namespaces of its own) behind the logical address; client `cli` writes numbered rows,
//! one transaction each, and notes each acknowledged one. Checked from outside: the rows
//! through the logical address, the epoch the database was started in, the agents' logs.
use std::time::Duration;

use anyhow::{ensure, Result};
use takeover_lab::{
    agents::{with_logs, Agent, Cluster, Timing, LOGICAL},
    database::{psql, rows, PgDisk, Writer},
    topology::{wait_for, Host, Lan},
    Takeover,
};

const WAIT: Duration = Duration::from_secs(30);

fn takeover() -> Takeover {
    Takeover::new(env!("CARGO_BIN_EXE_takeover"))
}

/// Dropped in this order: the client, the agents, their files, the namespaces (which kill
/// what the agents left running), then the disk.
struct Setup {
    agents: Vec<Agent>,
    cluster: Cluster,
    lan: Lan,
    disk: PgDisk,
}

/// `me`'s configuration: the cluster's, with the database, and a fence that cuts the peer
/// off the LAN and off the shared disk (as fence_scsi does).
fn edit(cluster: &Cluster, disk: &PgDisk, me: &Host, peer: &Host, config: String) -> String {
    let fence = cluster.dir.join(format!("fence-{}.sh", peer.name));
    std::fs::write(
        &fence,
        format!(
            "ip -n {} link set lan down\nblockdev --setro {}\n",
            peer.ns.name,
            disk.path(&peer.name).dev
        ),
    )
    .expect("writing the fence script");
    let starts = cluster.dir.join("starts");
    let mut out = String::new();
    let mut in_fence = false;
    for line in config.lines() {
        if line.starts_with('[') {
            in_fence = line == "[fence]";
        }
        if in_fence && line.starts_with("command") {
            out.push_str(&format!(
                "command = [\"/bin/sh\", \"{}\"]\n",
                fence.display()
            ));
        } else {
            out.push_str(line);
            out.push('\n');
        }
    }
    out + &disk.service(&me.name, LOGICAL, &starts)
}

impl Setup {
    fn new() -> Result<Self> {
        let t = takeover();
        let disk = PgDisk::new(&["a", "b"], 256)?;
        let lan = Lan::new(&t, &["cli", "a", "b"])?;
        lan.dedicated_line("a", "b")?;
        let mut cluster = Cluster::new(&lan, Timing::default())?;
        cluster.own_mounts = true;
        // The database's wrapper (user postgres) notes its starts here.
        std::fs::write(cluster.dir.join("starts"), "")?;
        std::process::Command::new("chmod")
            .args(["0666"])
            .arg(cluster.dir.join("starts"))
            .status()?;
        let mut s = Setup {
            agents: Vec::new(),
            cluster,
            lan,
            disk,
        };
        for (me, peer) in [("a", "b"), ("b", "a")] {
            let agent = s.start(me, peer)?;
            s.agents.push(agent);
        }
        Ok(s)
    }

    fn start(&self, me: &str, peer: &str) -> Result<Agent> {
        let (me, peer) = (self.lan.host(me), self.lan.host(peer));
        self.cluster.start_with(&takeover(), me, peer, |c| {
            edit(&self.cluster, &self.disk, me, peer, c)
        })
    }

    fn cli(&self) -> &Host {
        self.lan.host("cli")
    }

    fn logged<T>(&self, r: Result<T>) -> Result<T> {
        with_logs(&self.agents, r)
    }

    /// The database answers through the logical address.
    fn wait_db(&self) -> Result<()> {
        self.logged(wait_for(
            "the database through the logical address",
            WAIT,
            || {
                let up = psql(&self.cli().ns, LOGICAL, "select 1").is_ok_and(|o| o.trim() == "1");
                Ok(up.then_some(()))
            },
        ))
    }

    /// The epochs and reasons the database was started with, per host, in order.
    fn starts(&self) -> Vec<String> {
        std::fs::read_to_string(self.cluster.dir.join("starts"))
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect()
    }
}

/// Host `name` dies at once: every process of it frozen, its links down and its path to the
/// disk gone (what was not on the disk is lost, as at a power cut), then killed.
fn crash(s: &mut Setup, name: &str, agent: usize) -> Result<()> {
    let host = s.lan.host(name);
    let pids =
        takeover_lab::run(std::process::Command::new("ip").args(["netns", "pids", &host.ns.name]))?;
    let pids: Vec<i32> = pids.lines().filter_map(|l| l.trim().parse().ok()).collect();
    for &p in &pids {
        unsafe { libc::kill(p, libc::SIGSTOP) };
    }
    host.ns.sh("ip link set ded down; ip link set lan down")?;
    s.disk.path(name).set_writable(false)?;
    for &p in &pids {
        unsafe { libc::kill(p, libc::SIGKILL) };
    }
    s.agents[agent].kill();
    Ok(())
}

/// Every acknowledged row is in the table.
fn all_acked_there(s: &Setup, acked: &[(u64, f64)]) -> Result<()> {
    let there = rows(&s.cli().ns, LOGICAL)?;
    let lost: Vec<u64> = acked
        .iter()
        .map(|(n, _)| *n)
        .filter(|n| !there.contains(n))
        .collect();
    ensure!(
        lost.is_empty(),
        "{} acknowledged rows lost (of {}): {:?}",
        lost.len(),
        acked.len(),
        &lost[..lost.len().min(20)]
    );
    Ok(())
}

#[test]
fn a_crashed_database_host_is_taken_over_with_every_acknowledged_row_and_given_back() -> Result<()>
{
    let mut s = Setup::new()?;
    s.wait_db()?;
    psql(
        &s.cli().ns,
        LOGICAL,
        "create table rows (n bigint primary key)",
    )?;
    // Started on a, in epoch 1, and nowhere else.
    ensure!(s.starts() == vec!["a 1 takeover"], "{:?}", s.starts());

    let mut writer = Writer::start(&s.cli().ns, LOGICAL, &s.cluster.dir)?;
    s.logged(writer.wait_acked(0, 50, WAIT))?;
    let before = writer.acked().len();
    crash(&mut s, "a", 0)?;
    // b fences a, mounts the disk (ext4 replays its journal), starts the database (which
    // recovers from its WAL), opens once it accepts connections.
    s.logged(writer.wait_acked(before, 50, WAIT))?;
    let acked = writer.acked();
    all_acked_there(&s, &acked)?;
    let gap = Writer::longest_gap(&acked, before.saturating_sub(1));
    eprintln!(
        "takeover: {} rows acknowledged, longest gap {gap:?}",
        acked.len()
    );
    // The same data, recovered: the rows from before the crash are there, under b.
    ensure!(
        rows(&s.cli().ns, LOGICAL)?.contains(&1),
        "the database b started is not the one a served"
    );
    ensure!(
        s.starts() == vec!["a 1 takeover", "b 2 takeover"],
        "{:?}",
        s.starts()
    );
    let b = &s.agents[1];
    ensure!(
        b.logged("fenced", &[("peer", "a")]),
        "b took a's database without a fence"
    );
    ensure!(b.logged("takeover", &[("resource", LOGICAL), ("epoch", "2")]));

    // a comes back (a reboot: links up, its path to the disk back, a new agent) and, first
    // in preference, gets it back: b stops the database and unmounts before a mounts.
    let a = s.lan.host("a");
    a.ns.sh("ip link set lan up; ip link set ded up")?;
    s.disk.path("a").set_writable(true)?;
    s.agents[0] = s.start("a", "b")?;
    let before = writer.acked().len();
    s.logged(wait_for("the database back on a", WAIT, || {
        Ok((s.starts().len() == 3 && writer.acked().len() > before + 20).then_some(()))
    }))?;
    let acked = writer.stop()?;
    all_acked_there(&s, &acked)?;
    ensure!(
        s.starts() == vec!["a 1 takeover", "b 2 takeover", "a 3 handover"],
        "{:?}",
        s.starts()
    );
    let b = &s.agents[1];
    ensure!(b.logged("releasing", &[("resource", LOGICAL)]));
    ensure!(s.agents[0].logged("takeover", &[("resource", LOGICAL), ("epoch", "3")]));
    eprintln!(
        "failback: {} rows acknowledged, longest gap {:?}",
        acked.len(),
        Writer::longest_gap(&acked, before.saturating_sub(1))
    );
    Ok(())
}
