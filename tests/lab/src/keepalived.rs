//! keepalived (Debian's package) on the same topology, as the reference the failover
//! benchmark compares with: VRRP on `lan`, a the master (priority 200), b the backup; with a
//! [`Track`], a `vrrp_script` watching a service.
use std::{
    os::unix::process::CommandExt,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
};

use anyhow::{Context, Result};

use crate::{agents::LOGICAL, topology::Host};

/// How keepalived is tuned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Vrrp {
    /// As installed: VRRPv2, one advertisement a second.
    Default,
    /// VRRPv3 with `advert_int 0.01` (10 ms), its fastest.
    Fast,
}

/// A `vrrp_script` the instance tracks (`track_script`): keepalived's own health check.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Track {
    /// The command, run without a shell (keepalived splits it at spaces); exit 0 is healthy.
    pub script: String,
    /// Seconds between runs: keepalived 2.2.7 takes whole seconds only.
    pub interval_s: u32,
    /// Seconds a run may take.
    pub timeout_s: u32,
    /// Consecutive failures that make it failed, and passes that make it healthy again.
    pub fall: u32,
    pub rise: u32,
    /// None: a failed script puts the instance in FAULT (a master gives its address up at
    /// once, with a priority-0 advert). Some(w): the priority changes by `w` instead.
    pub weight: Option<i32>,
}

/// One keepalived (its parent and VRRP child in a process group of their own), SIGKILLed
/// as a group on drop.
pub struct Keepalived {
    child: Child,
    dir: PathBuf,
    pub vrrp: Vrrp,
    pub track: Option<Track>,
}

impl Keepalived {
    /// Starts keepalived on `host` with a config written under `dir`.
    pub fn start(host: &Host, vrrp: Vrrp, dir: &Path) -> Result<Self> {
        Self::start_tracking(host, vrrp, dir, None)
    }

    /// The same, its instance tracking `track` if given.
    pub fn start_tracking(
        host: &Host,
        vrrp: Vrrp,
        dir: &Path,
        track: Option<Track>,
    ) -> Result<Self> {
        // One directory per start: a replaced keepalived removes only its own.
        static STARTS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = STARTS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = dir.join(format!("keepalived-{}-{n}", host.name));
        std::fs::create_dir_all(&dir)?;
        let (priority, state) = if host.name == "a" {
            (200, "MASTER")
        } else {
            (100, "BACKUP")
        };
        let (version, advert) = match vrrp {
            Vrrp::Default => ("", ""),
            Vrrp::Fast => ("    vrrp_version 3\n", "    advert_int 0.01\n"),
        };
        // Scripts run as root, from root's files only.
        let (security, script, tracked) = match &track {
            None => (String::new(), String::new(), String::new()),
            Some(k) => (
                "    script_user root\n    enable_script_security\n".to_string(),
                format!(
                    "vrrp_script service {{\n    script \"{}\"\n    interval {}\n    timeout {}\n    \
                     fall {}\n    rise {}\n{}}}\n",
                    k.script,
                    k.interval_s,
                    k.timeout_s,
                    k.fall,
                    k.rise,
                    k.weight
                        .map(|w| format!("    weight {w}\n"))
                        .unwrap_or_default()
                ),
                "    track_script {\n        service\n    }\n".to_string(),
            ),
        };
        let conf = dir.join("keepalived.conf");
        std::fs::write(
            &conf,
            format!(
                "global_defs {{\n    router_id {name}\n{version}{security}}}\n{script}\
                 vrrp_instance bench {{\n    state {state}\n    interface lan\n    virtual_router_id 77\n    \
                 priority {priority}\n{advert}    virtual_ipaddress {{\n        {LOGICAL}/24\n    }}\n{tracked}}}\n",
                name = host.name
            ),
        )?;
        // The backup's service binds the address before keepalived gives it one.
        host.ns.sh("sysctl -qw net.ipv4.ip_nonlocal_bind=1")?;
        let child = Command::new("nsenter")
            .arg(format!("--net={}", host.ns.path().display()))
            .arg("keepalived")
            .args(["--dont-fork", "--vrrp", "--log-console", "--use-file"])
            .arg(&conf)
            .arg("--pid")
            .arg(dir.join("keepalived.pid"))
            .arg("--vrrp_pid")
            .arg(dir.join("vrrp.pid"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("log"))?)
            .process_group(0)
            .spawn()
            .context("starting keepalived (cargo xtask setup installs it)")?;
        Ok(Self {
            child,
            dir,
            vrrp,
            track,
        })
    }

    /// Every process of this keepalived, SIGKILLed at once: a crash, no goodbye advert.
    /// Sends `signal` to every keepalived process (SIGSTOP: a hang; SIGCONT: back).
    pub fn signal(&self, signal: i32) {
        unsafe { libc::killpg(self.child.id() as i32, signal) };
    }

    pub fn kill(&mut self) {
        let pgid = self.child.id() as i32;
        unsafe { libc::killpg(pgid, libc::SIGKILL) };
        let _ = self.child.wait();
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("log")).unwrap_or_default()
    }
}

impl Drop for Keepalived {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
