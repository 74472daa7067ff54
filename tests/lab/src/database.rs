//! PostgreSQL (Debian's 15) on a shared disk for the lab: an ext4 file system on a loop
//! device, reached by each host through a loop device of its own over the same file (its own
//! path to the LUN: one can be fenced while the other works), a cluster initialised on it,
//! the `[[service]]` that runs it cold under the agents, and a client that writes numbered
//! rows, one transaction each, and notes each acknowledged one.
use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Duration,
};

use anyhow::{bail, Context, Result};

use crate::{
    agents::{with_logs, Agent, Cluster, Timing, LOGICAL},
    run,
    storage::LoopDevice,
    topology::{wait_for, Host, Lan},
    Netns, Takeover,
};

pub const PG_BIN: &str = "/usr/lib/postgresql/15/bin";
pub const PORT: u16 = 5432;

/// The shared disk with a database cluster on it; its mount point is removed when dropped.
pub struct PgDisk {
    /// Per host (`a`, `b`): its path to the disk.
    pub paths: Vec<(String, LoopDevice)>,
    /// Where the agents mount it (each in its own mount namespace).
    pub mount: PathBuf,
}

impl Drop for PgDisk {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir(&self.mount);
    }
}

impl PgDisk {
    /// Formats a `mib` MiB disk and initialises a cluster on it (mounted here for that, and
    /// unmounted again): `hosts` get a path each.
    pub fn new(hosts: &[&str], mib: u64) -> Result<Self> {
        let first = LoopDevice::new("pgdata", mib)?;
        run(Command::new("mkfs.ext4").args(["-q", "-F", "-L", "takeover-pg", &first.dev]))?;
        let mount = std::env::temp_dir().join(format!(
            "takeover-pg-{}-{}",
            std::process::id(),
            crate::unique()
        ));
        std::fs::create_dir_all(&mount)?;
        let mut disk = PgDisk {
            paths: Vec::new(),
            mount,
        };
        run(Command::new("mount").arg(&first.dev).arg(&disk.mount))?;
        let init = disk.init();
        let unmounted = run(Command::new("umount").arg(&disk.mount));
        init?;
        unmounted?;
        let mut paths = vec![(hosts[0].to_string(), first)];
        for h in &hosts[1..] {
            let other = paths[0].1.another()?;
            paths.push((h.to_string(), other));
        }
        disk.paths = paths;
        Ok(disk)
    }

    fn init(&self) -> Result<()> {
        run(Command::new("chown")
            .arg("postgres:postgres")
            .arg(&self.mount))?;
        run(Command::new("runuser")
            .args(["-u", "postgres", "--"])
            .arg(format!("{PG_BIN}/initdb"))
            .args(["-A", "trust", "-U", "postgres", "--no-instructions", "-D"])
            .arg(self.data()))?;
        let conf = self.data().join("postgresql.conf");
        let mut text = std::fs::read_to_string(&conf)?;
        // On the logical address only through the agents' gate; no Unix socket (the hosts
        // share /run here); every commit durable before it is acknowledged.
        text.push_str(&format!(
            "\nlisten_addresses = '*'\nport = {PORT}\nunix_socket_directories = ''\n\
             shared_buffers = 16MB\nmax_connections = 30\nfsync = on\n\
             synchronous_commit = on\nfull_page_writes = on\nlog_min_messages = warning\n"
        ));
        std::fs::write(&conf, text)?;
        // Any client of the lab's LAN, without a password (trust).
        let hba = self.data().join("pg_hba.conf");
        let mut text = std::fs::read_to_string(&hba)?;
        text.push_str("\nhost all all 0.0.0.0/0 trust\n");
        std::fs::write(&hba, text)?;
        Ok(())
    }

    pub fn data(&self) -> PathBuf {
        self.mount.join("data")
    }

    /// Host `host`'s path to the disk.
    pub fn path(&self, host: &str) -> &LoopDevice {
        &self
            .paths
            .iter()
            .find(|(h, _)| h == host)
            .expect("a host")
            .1
    }

    /// The `[[service]]` that runs the database cold on `logical` for `host`: mounted from
    /// its path, started by a wrapper that notes `TAKEOVER_EPOCH` and `TAKEOVER_REASON` in
    /// `starts` (a file the test reads) and, at a takeover, removes the fenced host's lock
    /// file (as the pgsql resource agent does), stopped with SIGINT (PostgreSQL's fast shutdown),
    /// ready once `pg_isready` says it accepts connections.
    pub fn service(&self, host: &str, logical: &str, starts: &Path) -> String {
        // A takeover follows a fenced host: its postmaster.pid names a process of that host
        // (here, possibly a zombie nobody reaps), not one that could share the data.
        let note = format!(
            "echo \"{host} $TAKEOVER_EPOCH $TAKEOVER_REASON\" >> {starts}; \
             if [ \"$TAKEOVER_REASON\" = takeover ]; then rm -f {data}/postmaster.pid; fi; \
             exec {PG_BIN}/postgres -D {data}",
            starts = starts.display(),
            data = self.data().display()
        );
        format!(
            r#"
[[service]]
name = "db"
address = "{logical}"
protocol = "tcp"
port = {PORT}
standby = "cold"

[service.filesystem]
device = "{dev}"
mount = "{mount}"
type = "ext4"

[service.run]
command = ["/bin/sh", "-c", {note:?}]
user = "postgres"
stop_signal = "SIGINT"
stop_timeout = "20s"

[[service.check]]
type = "exec"
command = ["{PG_BIN}/pg_isready", "-q", "-h", "{logical}", "-p", "{PORT}", "-U", "postgres", "-t", "1"]
interval = "100ms"
timeout = "100ms"
fall = 3
rise = 1

[service.recovery]
restarts = 2
escalate = true
hold = "1s"
"#,
            dev = self.path(host).dev,
            mount = self.mount.display(),
        )
    }
}

/// `psql` from `ns` to the database at `addr`: its output (unaligned, tuples only).
pub fn psql(ns: &Netns, addr: &str, sql: &str) -> Result<String> {
    run(ns
        .cmd("psql")
        .arg(format!(
            "host={addr} port={PORT} user=postgres dbname=postgres connect_timeout=2"
        ))
        .args(["-qAtX", "-v", "ON_ERROR_STOP=1", "-c", sql]))
}

/// Every row number in the table `rows`.
pub fn rows(ns: &Netns, addr: &str) -> Result<BTreeSet<u64>> {
    psql(ns, addr, "select n from rows")?
        .lines()
        .map(|l| l.trim().parse::<u64>().context("a row number"))
        .collect()
}

/// A client writing numbered rows to `rows`, one transaction (and one connection) each,
/// noting each acknowledged one with the time of the acknowledgement; killed on drop.
pub struct Writer {
    child: Option<Child>,
    acked: PathBuf,
    stop: PathBuf,
}

impl Writer {
    pub fn start(ns: &Netns, addr: &str, dir: &Path) -> Result<Self> {
        let acked = dir.join(format!("acked-{}", crate::unique()));
        let stop = dir.join(format!("stop-{}", crate::unique()));
        let script = format!(
            r#"i=0
while [ ! -e {stop} ]; do
  i=$((i+1))
  if psql "host={addr} port={PORT} user=postgres dbname=postgres connect_timeout=2" -qAtX -c "insert into rows values ($i)" >/dev/null 2>&1; then
    echo "$i $(date +%s.%N)" >> {acked}
  else
    sleep 0.01
  fi
done"#,
            stop = stop.display(),
            acked = acked.display(),
        );
        let child = ns
            .cmd("sh")
            .args(["-c", &script])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        Ok(Self {
            child: Some(child),
            acked,
            stop,
        })
    }

    /// The acknowledged rows so far: number and time (seconds since the epoch).
    pub fn acked(&self) -> Vec<(u64, f64)> {
        std::fs::read_to_string(&self.acked)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| {
                let (n, t) = l.split_once(' ')?;
                Some((n.parse().ok()?, t.parse().ok()?))
            })
            .collect()
    }

    /// Waits until `more` rows beyond the first `after` are acknowledged.
    pub fn wait_acked(&self, after: usize, more: usize, limit: Duration) -> Result<()> {
        let start = std::time::Instant::now();
        while self.acked().len() < after + more {
            if start.elapsed() > limit {
                bail!(
                    "{} rows acknowledged in {limit:?}, waiting for {}",
                    self.acked().len(),
                    after + more
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }

    /// Stops after the row under way.
    pub fn stop(&mut self) -> Result<Vec<(u64, f64)>> {
        std::fs::write(&self.stop, b"")?;
        if let Some(mut c) = self.child.take() {
            c.wait()?;
        }
        Ok(self.acked())
    }

    /// The longest time between two acknowledgements at or after row index `from`.
    pub fn longest_gap(acked: &[(u64, f64)], from: usize) -> Duration {
        acked[from.min(acked.len())..]
            .windows(2)
            .map(|w| Duration::from_secs_f64((w[1].1 - w[0].1).max(0.0)))
            .max()
            .unwrap_or_default()
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = std::fs::remove_file(&self.acked);
        let _ = std::fs::remove_file(&self.stop);
    }
}

const WAIT: Duration = Duration::from_secs(30);

/// Agents on `a` and `b` (each in mount and IPC namespaces of its own) running the database
/// cold on the logical address, client `cli`. Dropped in this order: the agents, their
/// files, the namespaces (which kill what the agents left running), then the disk.
pub struct DbCluster {
    pub agents: Vec<Agent>,
    pub cluster: Cluster,
    pub lan: Lan,
    pub disk: PgDisk,
    t: Takeover,
}

/// What one crash and failback cost the client.
#[derive(Clone, Debug)]
pub struct Report {
    /// Rows acknowledged before the crash, and in all.
    pub before: usize,
    pub acked: Vec<(u64, f64)>,
    /// The longest wait between two acknowledgements across the takeover, the failback.
    pub takeover_gap: Duration,
    pub failback_gap: Duration,
    /// Acknowledged rows not in the table after the takeover, after the failback.
    pub takeover_lost: Vec<u64>,
    pub failback_lost: Vec<u64>,
    /// When a crashed, and when it was back (seconds since the epoch).
    pub crashed_at: f64,
    pub rebooted_at: f64,
}

/// Now, in seconds since the epoch (the agents' logs' `ts`).
pub fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

impl DbCluster {
    pub fn new(t: &Takeover, timing: Timing) -> Result<Self> {
        let disk = PgDisk::new(&["a", "b"], 256)?;
        let lan = Lan::new(t, &["cli", "a", "b"])?;
        lan.dedicated_line("a", "b")?;
        let mut cluster = Cluster::new(&lan, timing)?;
        cluster.own_mounts = true;
        // The database's wrapper (user postgres) notes its starts here.
        let starts = cluster.dir.join("starts");
        std::fs::write(&starts, "")?;
        run(Command::new("chmod").arg("0666").arg(&starts))?;
        let mut s = DbCluster {
            agents: Vec::new(),
            cluster,
            lan,
            disk,
            t: t.clone(),
        };
        for (me, peer) in [("a", "b"), ("b", "a")] {
            let agent = s.start(me, peer)?;
            s.agents.push(agent);
        }
        Ok(s)
    }

    /// Starts `me`'s agent: the cluster's configuration, with the database, and a fence that
    /// cuts the peer off the LAN and off the shared disk (as fence_scsi does).
    pub fn start(&self, me: &str, peer: &str) -> Result<Agent> {
        let (me, peer) = (self.lan.host(me), self.lan.host(peer));
        let fence = self.cluster.dir.join(format!("fence-{}.sh", peer.name));
        std::fs::write(
            &fence,
            format!(
                "ip -n {} link set lan down\nblockdev --setro {}\n",
                peer.ns.name,
                self.disk.path(&peer.name).dev
            ),
        )?;
        let service = self
            .disk
            .service(&me.name, LOGICAL, &self.cluster.dir.join("starts"));
        self.cluster.start_with(&self.t, me, peer, |config| {
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
            out + &service
        })
    }

    pub fn cli(&self) -> &Host {
        self.lan.host("cli")
    }

    /// Adds both agents' logs to an error.
    pub fn logged<T>(&self, r: Result<T>) -> Result<T> {
        with_logs(&self.agents, r)
    }

    /// Waits until the database answers through the logical address.
    pub fn wait_db(&self) -> Result<()> {
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
    pub fn starts(&self) -> Vec<String> {
        std::fs::read_to_string(self.cluster.dir.join("starts"))
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect()
    }

    /// Host `name` (agent `agent`) dies at once: every process of it frozen, its links down
    /// and its path to the disk gone (what was not on the disk is lost, as at a power cut),
    /// then killed.
    pub fn crash(&mut self, name: &str, agent: usize) -> Result<()> {
        let host = self.lan.host(name);
        let pids = run(Command::new("ip").args(["netns", "pids", &host.ns.name]))?;
        let pids: Vec<i32> = pids.lines().filter_map(|l| l.trim().parse().ok()).collect();
        for &p in &pids {
            // SAFETY: plain signals to processes of the lab's own namespace.
            unsafe { libc::kill(p, libc::SIGSTOP) };
        }
        host.ns.sh("ip link set ded down; ip link set lan down")?;
        self.disk.path(name).set_writable(false)?;
        for &p in &pids {
            // SAFETY: as above.
            unsafe { libc::kill(p, libc::SIGKILL) };
        }
        self.agents[agent].kill();
        Ok(())
    }

    /// Host `name` (agent `agent`) back as after a reboot: links up, its path to the disk
    /// back, a new agent.
    pub fn reboot(&mut self, name: &str, peer: &str, agent: usize) -> Result<()> {
        self.lan
            .host(name)
            .ns
            .sh("ip link set lan up; ip link set ded up")?;
        self.disk.path(name).set_writable(true)?;
        self.agents[agent] = self.start(name, peer)?;
        Ok(())
    }

    /// The acknowledged rows not in the table.
    pub fn lost(&self, acked: &[(u64, f64)]) -> Result<Vec<u64>> {
        let there = rows(&self.cli().ns, LOGICAL)?;
        Ok(acked
            .iter()
            .map(|(n, _)| *n)
            .filter(|n| !there.contains(n))
            .collect())
    }

    /// The whole job: the database up on `a`, a client writing, `a` crashed, taken over by
    /// `b`, `a` back and given it back; what each cost.
    pub fn crash_and_failback(&mut self) -> Result<Report> {
        self.wait_db()?;
        psql(
            &self.cli().ns,
            LOGICAL,
            "create table rows (n bigint primary key)",
        )?;
        let mut writer = Writer::start(&self.cli().ns, LOGICAL, &self.cluster.dir)?;
        self.logged(writer.wait_acked(0, 50, WAIT))?;
        let before = writer.acked().len();
        let crashed_at = unix_now();
        self.crash("a", 0)?;
        self.logged(writer.wait_acked(before, 50, WAIT))?;
        let acked = writer.acked();
        let takeover_lost = self.lost(&acked)?;
        let takeover_gap = Writer::longest_gap(&acked, before.saturating_sub(1));
        let back = acked.len();
        let rebooted_at = unix_now();
        self.reboot("a", "b", 0)?;
        self.logged(wait_for("the database back on a", WAIT, || {
            Ok((self.starts().len() == 3 && writer.acked().len() > back + 20).then_some(()))
        }))?;
        let acked = writer.stop()?;
        let failback_lost = self.lost(&acked)?;
        let failback_gap = Writer::longest_gap(&acked, back.saturating_sub(1));
        Ok(Report {
            before,
            acked,
            takeover_gap,
            failback_gap,
            takeover_lost,
            failback_lost,
            crashed_at,
            rebooted_at,
        })
    }
}
