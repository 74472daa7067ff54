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

use crate::{run, storage::LoopDevice, Netns};

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
