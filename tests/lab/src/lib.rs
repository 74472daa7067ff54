//! Network namespace topologies for the integration tests, the demo and the benchmarks.
//!
//! Every namespace is a guard: it is named `to-<role>-<pid>-<n>` (unique per process and
//! call) and deleted, with the pins made in it, when dropped, so a failing test cleans up too.
//! Sockets are opened inside a namespace from a short-lived thread that `setns`es into it; a
//! socket stays in the namespace it was made in, so the caller can use it from anywhere.
pub mod agents;
pub mod bench_services;
pub mod capture;
pub mod database;
pub mod database_demo;
pub mod failover_bench;
pub mod failover_demo;
pub mod http_load;
pub mod keepalived;
pub mod load;
pub mod previous;
pub mod service_demo;
pub mod services;
pub mod stats;
pub mod storage;
pub mod topology;
pub mod udp;

use std::{
    fs::File,
    net::UdpSocket,
    os::fd::AsRawFd,
    path::{Path, PathBuf},
    process::{Command, Output},
    sync::atomic::{AtomicU32, Ordering},
};

use anyhow::{bail, Context, Result};

/// Where `takeover` pins (kept in sync with takeover_common::PIN_ROOT; the lab does not link
/// the agent so that it builds without the eBPF toolchain).
pub const PIN_ROOT: &str = "/sys/fs/bpf/takeover";

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A number not used before in this process (for names of scratch files and namespaces).
pub fn unique() -> u32 {
    COUNTER.fetch_add(1, Ordering::Relaxed)
}

/// Runs `cmd`, failing with its stderr if it fails.
pub fn run(cmd: &mut Command) -> Result<String> {
    let out = cmd
        .output()
        .with_context(|| format!("cannot run {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim(),
            String::from_utf8_lossy(&out.stdout).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Runs `ip ARGS...` (split on whitespace).
pub fn ip(args: &str) -> Result<String> {
    run(Command::new("ip").args(args.split_whitespace()))
}

/// A network namespace that is deleted (with its pins) when dropped.
#[derive(Debug)]
pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn new(role: &str) -> Result<Self> {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let name = format!("to-{role}-{}-{n}", std::process::id());
        ip(&format!("netns add {name}"))?;
        let ns = Self { name };
        ns.ip("link set lo up")?;
        Ok(ns)
    }

    /// `ip -n NAME ARGS...`
    pub fn ip(&self, args: &str) -> Result<String> {
        ip(&format!("-n {} {args}", self.name))
    }

    /// A command run inside the namespace (`ip netns exec`).
    pub fn cmd(&self, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name, program]);
        c
    }

    /// Runs a shell command line inside the namespace.
    pub fn sh(&self, line: &str) -> Result<String> {
        run(self.cmd("sh").args(["-c", line]))
    }

    /// The pin directory `takeover` uses for this namespace: `<PIN_ROOT>/<id>`.
    pub fn pin_dir(&self) -> Result<PathBuf> {
        Ok(Path::new(PIN_ROOT).join(self.id()?))
    }

    /// The id `takeover` keys this namespace's pins and files by (kept in sync with the
    /// agent's `sys::netns::current_id`): `netns-<cookie>`, or `net-<inode>` on kernels
    /// without namespace cookies (< 5.14).
    pub fn id(&self) -> Result<String> {
        self.within(|| match netns_cookie()? {
            Some(c) => Ok(format!("netns-{c}")),
            None => Ok(format!("net-{}", self.inode()?)),
        })
    }

    /// The namespace's inode, which earlier versions keyed pins by (`net-<inode>`).
    pub fn inode(&self) -> Result<u64> {
        use std::os::unix::fs::MetadataExt;
        Ok(std::fs::metadata(self.path())?.ino())
    }

    pub fn path(&self) -> PathBuf {
        Path::new("/run/netns").join(&self.name)
    }

    /// The control socket of the agent running in this namespace (beside its epochs).
    pub fn control_socket(&self) -> Result<PathBuf> {
        let dir = self.pin_dir()?;
        let id = dir.file_name().context("a pin directory has a name")?;
        Ok(Path::new("/run/takeover").join(id).join("control.sock"))
    }

    /// Runs `f` on a thread inside this namespace (only the network namespace changes).
    pub fn within<T: Send>(&self, f: impl FnOnce() -> Result<T> + Send) -> Result<T> {
        let file = File::open(self.path())
            .with_context(|| format!("opening {}", self.path().display()))?;
        std::thread::scope(|s| {
            s.spawn(|| {
                if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                    return Err(std::io::Error::last_os_error()).context("setns");
                }
                f()
            })
            .join()
            .expect("namespace thread panicked")
        })
    }

    /// A UDP socket bound to `addr` inside this namespace.
    pub fn udp(&self, addr: &str) -> Result<UdpSocket> {
        let addr = addr.to_string();
        self.within(move || UdpSocket::bind(&addr).with_context(|| format!("binding {addr}")))
    }
}

/// SO_NETNS_COOKIE of the calling thread's network namespace; `None` on kernels without it.
pub fn netns_cookie() -> Result<Option<u64>> {
    let sock = std::os::unix::net::UnixDatagram::unbound()?;
    let mut value = 0u64;
    let mut len = std::mem::size_of::<u64>() as libc::socklen_t;
    let rc = unsafe {
        libc::getsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_NETNS_COOKIE,
            (&mut value as *mut u64).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::ENOPROTOOPT) {
            return Ok(None);
        }
        return Err(e).context("SO_NETNS_COOKIE");
    }
    Ok(Some(value))
}

/// Kills the services an agent ran in a namespace, as its pid files (`PID STARTTIME`) in
/// `dir` record them: each one's process group, if its leader is still the process recorded
/// (a pid reused since is left alone). Services outlive their agent by design.
fn kill_services(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let text = std::fs::read_to_string(e.path()).unwrap_or_default();
        let mut words = text.split_whitespace();
        let (Some(pid), Some(start)) = (
            words.next().and_then(|p| p.parse::<i32>().ok()),
            words.next(),
        ) else {
            continue;
        };
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let now = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(19));
        if pid > 1 && now == Some(start) {
            unsafe { libc::kill(-pid, libc::SIGKILL) };
        }
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        if let Ok(dir) = self.pin_dir() {
            // The agent keeps its epochs beside, under /run/takeover/<same id>.
            if let Some(id) = dir.file_name() {
                let run = Path::new("/run/takeover").join(id);
                kill_services(&run.join("services"));
                let _ = std::fs::remove_dir_all(run);
            }
            let _ = std::fs::remove_dir_all(dir);
        }
        // What a previous release (pins keyed by the inode) made here: while the namespace
        // lives its inode is its own, so these are this namespace's.
        if let Ok(ino) = self.inode() {
            let id = format!("net-{ino}");
            let _ = std::fs::remove_dir_all(Path::new("/run/takeover").join(&id));
            let _ = std::fs::remove_dir_all(Path::new(PIN_ROOT).join(id));
        }
        let _ = ip(&format!("netns del {}", self.name));
    }
}

/// The `takeover` binary under test, run with `--netns`.
#[derive(Clone, Debug)]
pub struct Takeover {
    pub bin: PathBuf,
}

impl Takeover {
    pub fn new(bin: impl Into<PathBuf>) -> Self {
        Self { bin: bin.into() }
    }

    pub fn cmd(&self, ns: &Netns) -> Command {
        let mut c = Command::new(&self.bin);
        c.args(["--netns", &ns.name]);
        c
    }

    /// Runs `takeover --netns NS ARGS...` and returns its stdout; fails if it fails.
    pub fn ok(&self, ns: &Netns, args: &str) -> Result<String> {
        run(self.cmd(ns).args(args.split_whitespace()))
    }

    /// Runs `takeover ARGS...` in no particular namespace (`storage`, `check-config`).
    pub fn ok_plain(&self, args: &str) -> Result<String> {
        run(Command::new(&self.bin).args(args.split_whitespace()))
    }

    /// Runs it and returns the whole output, success or not.
    pub fn output(&self, ns: &Netns, args: &str) -> Result<Output> {
        Ok(self.cmd(ns).args(args.split_whitespace()).output()?)
    }

    /// `map show --json` parsed.
    pub fn map(&self, ns: &Netns) -> Result<serde_json::Value> {
        Ok(serde_json::from_str(&self.ok(ns, "map show --json")?)?)
    }

    /// The counters of one entry (`service` like "udp/53" or None), or None if absent.
    pub fn entry(
        &self,
        ns: &Netns,
        iface: &str,
        addr: &str,
        service: Option<&str>,
    ) -> Result<Option<serde_json::Value>> {
        let map = self.map(ns)?;
        let Some(ifaces) = map["interfaces"].as_array() else {
            return Ok(None);
        };
        for i in ifaces.iter().filter(|i| i["iface"] == iface) {
            for e in i["entries"].as_array().into_iter().flatten() {
                let svc = e["service"]
                    .as_object()
                    .map(|s| format!("{}/{}", s["proto"].as_str().unwrap_or(""), s["port"]));
                if e["address"] == addr && svc.as_deref() == service {
                    return Ok(Some(e.clone()));
                }
            }
        }
        Ok(None)
    }

    /// One counter of an entry, such as ("rx_drop", "packets"); 0 if the entry is absent.
    pub fn counter(
        &self,
        ns: &Netns,
        iface: &str,
        addr: &str,
        service: Option<&str>,
        which: &str,
    ) -> Result<u64> {
        Ok(self
            .entry(ns, iface, addr, service)?
            .and_then(|e| e["counters"][which]["packets"].as_u64())
            .unwrap_or(0))
    }
}
