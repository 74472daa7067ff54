//! Real agents (`takeover run`) on a [`Lan`]: a shared key, a fence command, a config per
//! node, and the processes, kept by PID and SIGKILLed on drop.
use std::{
    io::Write as _,
    os::unix::fs::PermissionsExt,
    path::PathBuf,
    process::{Child, Stdio},
};

use anyhow::Result;

use crate::{
    topology::{Host, Lan},
    Takeover,
};

/// The logical address the agents of a [`Cluster`] share (owner `a`, standby `b`).
pub const LOGICAL: &str = "10.77.0.100";

/// Heartbeat settings written into every node's configuration.
#[derive(Clone, Debug)]
pub struct Timing {
    pub interval: &'static str,
    pub misses: u32,
    pub preempt_delay: &'static str,
    /// Let the agents ask for real-time priority (the demo; tests leave the machine alone).
    pub realtime: bool,
}

impl Default for Timing {
    /// Slow enough that a loaded 2-core test machine never misses a deadline by accident.
    fn default() -> Self {
        Self {
            interval: "10ms",
            misses: 10,
            preempt_delay: "300ms",
            realtime: false,
        }
    }
}

/// A running agent; SIGKILLed and reaped on drop. Its log goes to a file the test can read.
pub struct Agent {
    pub child: Child,
    pub log: PathBuf,
}

impl Agent {
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The core's events in the agent's log (JSON lines, `--log-format json`), in order.
    pub fn events(&self) -> Vec<serde_json::Value> {
        self.log()
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|v| v.get("event").is_some())
            .collect()
    }

    /// Whether the agent reported event `kind` with these fields (as strings).
    pub fn logged(&self, kind: &str, fields: &[(&str, &str)]) -> bool {
        self.events()
            .iter()
            .any(|e| e["event"] == kind && fields.iter().all(|(k, v)| e[*k].as_str() == Some(*v)))
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// A planned stop (SIGTERM), waited for: the gates stay, the peers wait for a restart.
    pub fn stop(&mut self) {
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let _ = self.child.wait();
    }
}

/// A configuration without its [fence] section (leases make it optional).
pub fn without_fence(config: String) -> String {
    let Some(start) = config.find("[fence]") else {
        return config;
    };
    let end = config[start + 1..]
        .find("\n[")
        .map_or(config.len(), |i| start + 2 + i);
    format!("{}{}", &config[..start], &config[end..])
}

/// `r`, with every agent's log (named a, b, ... in order) added to its error.
pub fn with_logs<T>(agents: &[Agent], r: Result<T>) -> Result<T> {
    r.map_err(|e| {
        let logs: String = agents
            .iter()
            .zip('a'..)
            .map(|(a, name)| format!("\n{name}:\n{}", a.log()))
            .collect();
        anyhow::anyhow!("{e}{logs}")
    })
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_file(&self.log);
    }
}

/// The command that cuts the host in namespace `ns` off the LAN: the lab's `fence` program
/// if it was built beside this executable (the benchmarks and the demo), else `ip`.
fn fence_command(ns: &str) -> String {
    let exe = std::env::current_exe().ok();
    let found = exe
        .iter()
        .flat_map(|e| e.ancestors().skip(1).take(2))
        .map(|d| d.join("fence"))
        .find(|p| p.is_file());
    match found {
        Some(f) => format!(r#"["{}", "{ns}", "lan", "{{peer}}"]"#, f.display()),
        None => format!(
            r#"["env", "FENCED={{peer}}", "ip", "-n", "{ns}", "link", "set", "lan", "down"]"#
        ),
    }
}

/// Files the agents share: a key and one config per node, whose fence cuts the peer off the
/// LAN (a valid fence: it can no longer serve).
pub struct Cluster {
    pub dir: PathBuf,
    pub timing: Timing,
    /// Each agent in mount and IPC namespaces of its own (what it mounts, its services'
    /// shared memory: as on hosts of their own).
    pub own_mounts: bool,
    /// Host name -> its namespace, for the fence that cuts it off the LAN.
    fences: std::collections::BTreeMap<String, String>,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Cluster {
    pub fn new(lan: &Lan, timing: Timing) -> Result<Self> {
        let dir = std::env::temp_dir().join(format!(
            "takeover-agents-{}-{}",
            std::process::id(),
            lan.switch.name
        ));
        std::fs::create_dir_all(&dir)?;
        let key = dir.join("key");
        std::fs::File::create(&key)?.write_all(b"an integration test key of 32 by")?;
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600))?;
        // The fence cuts the peer off the LAN, run without a shell (it is on the takeover's
        // critical path).
        let fences = lan
            .hosts
            .iter()
            .map(|h| (h.name.clone(), h.ns.name.clone()))
            .collect();
        Ok(Self {
            dir,
            timing,
            own_mounts: false,
            fences,
        })
    }

    pub fn config(&self, me: &Host, peer: &Host) -> Result<PathBuf> {
        let text = format!(
            r#"[node]
name = "{me}"
lan = "lan"
listen = ["{me_ded}:7400", "{me_lan}:7400"]

[[peer]]
name = "{peer}"
paths = ["{peer_ded}:7400", "{peer_lan}:7400"]

[[address]]
ip = "{LOGICAL}/24"
owner = "a"
standbys = ["b"]

[heartbeat]
interval = "{interval}"
misses = {misses}
startup_grace = "3s"

[preempt]
delay = "{preempt}"

[fence]
command = {fence}
timeout = "5s"

[announce]
count = 3
interval = "10ms"

[auth]
key_file = "{key}"
"#,
            me = me.name,
            me_ded = me.ded_addr4(),
            me_lan = me.addr4(),
            peer = peer.name,
            peer_ded = peer.ded_addr4(),
            peer_lan = peer.addr4(),
            fence = fence_command(&self.fences[&peer.name]),
            key = self.dir.join("key").display(),
            interval = self.timing.interval,
            misses = self.timing.misses,
            preempt = self.timing.preempt_delay,
        );
        let path = self.dir.join(format!("{}.toml", me.name));
        std::fs::write(&path, text)?;
        Ok(path)
    }

    pub fn start(&self, t: &Takeover, me: &Host, peer: &Host) -> Result<Agent> {
        self.start_with(t, me, peer, |c| c)
    }

    /// Starts `me`'s agent with its configuration edited by `edit` (a node configured
    /// differently from the others).
    pub fn start_with(
        &self,
        t: &Takeover,
        me: &Host,
        peer: &Host,
        edit: impl Fn(String) -> String,
    ) -> Result<Agent> {
        self.spawn(t, me, peer, edit, true)
    }

    /// Starts `me`'s agent with a `takeover` of the previous release
    /// ([`crate::previous`]), which logs text and knows no `--log-format`.
    pub fn start_previous(&self, t: &Takeover, me: &Host, peer: &Host) -> Result<Agent> {
        self.spawn(t, me, peer, |c| c, false)
    }

    fn spawn(
        &self,
        t: &Takeover,
        me: &Host,
        peer: &Host,
        edit: impl Fn(String) -> String,
        json: bool,
    ) -> Result<Agent> {
        let config = self.config(me, peer)?;
        std::fs::write(&config, edit(std::fs::read_to_string(&config)?))?;
        // One log per start: a replaced agent removes its own log when dropped.
        static STARTS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = STARTS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let log = self.dir.join(format!("{}-{n}.log", me.name));
        let mut cmd = t.cmd(&me.ns);
        if self.own_mounts {
            // unshare execs the agent: its pid is the agent's.
            let mut u = std::process::Command::new("unshare");
            u.args(["--mount", "--ipc", "--propagation", "private", "--"])
                .arg(cmd.get_program())
                .args(cmd.get_args());
            cmd = u;
        }
        let child = cmd
            .arg("run")
            .args(if self.timing.realtime {
                None
            } else {
                Some("--no-realtime")
            })
            // Events as JSON lines (tests read them by name and field), gate changes too.
            .args(
                json.then_some(["--log-format", "json", "--verbose"])
                    .into_iter()
                    .flatten(),
            )
            .arg("--config")
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log)?)
            .spawn()?;
        Ok(Agent { child, log })
    }
}
