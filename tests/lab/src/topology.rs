//! The docs/design.md test topology: a bridge in its own namespace as the switch, hosts on it
//! (each with one `lan` veth), and optionally a dedicated veth line between two hosts.
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::{Netns, Takeover};

/// A host on the LAN. Host `i` (0-based) has 10.77.0.<i+1>/24, fd77::<i+1>/64 and MAC
/// 02:00:00:00:00:<i+1> on `lan`.
#[derive(Debug)]
pub struct Host {
    pub name: String,
    pub ns: Netns,
    pub index: u8,
}

impl Host {
    /// The MACs (lower case) that answer this host's ARP requests for `addr` on its LAN:
    /// `count` requests `gap` apart. More than one: two hosts claim the address.
    pub fn arp_answerers(
        &self,
        addr: &str,
        count: u32,
        gap: Duration,
    ) -> Result<std::collections::BTreeSet<String>> {
        let wait = gap * count + Duration::from_millis(500);
        let out = self
            .ns
            .cmd("arping")
            .args(["-c", &count.to_string(), "-i", "lan"])
            .args(["-W", &format!("{:.3}", gap.as_secs_f64())])
            .args(["-w", &format!("{:.3}", wait.as_secs_f64()), addr])
            .output()?;
        Ok(String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.split_once("bytes from ")?.1.split_whitespace().next())
            .map(str::to_lowercase)
            .collect())
    }

    pub fn addr4(&self) -> String {
        format!("10.77.0.{}", self.index + 1)
    }

    pub fn addr6(&self) -> String {
        format!("fd77::{}", self.index + 1)
    }

    pub fn mac(&self) -> String {
        format!("02:00:00:00:00:{:02x}", self.index + 1)
    }

    /// MAC of this host's end of the dedicated line.
    pub fn ded_mac(&self) -> String {
        format!("02:00:00:00:01:{:02x}", self.index + 1)
    }

    pub fn ded_addr4(&self) -> String {
        format!("10.78.0.{}", self.index + 1)
    }

    /// Adds a logical address to `lan` (IPv6 without DAD, as the agent does).
    pub fn add_addr(&self, addr: &str) -> Result<()> {
        if addr.contains(':') {
            self.ns.ip(&format!("addr add {addr}/64 dev lan nodad"))?;
        } else {
            self.ns.ip(&format!("addr add {addr}/24 dev lan"))?;
        }
        Ok(())
    }

    /// A permanent neighbour entry, so ARP/ND is not part of what a test measures.
    pub fn static_neigh(&self, addr: &str, mac: &str) -> Result<()> {
        self.ns.ip(&format!(
            "neigh replace {addr} lladdr {mac} dev lan nud permanent"
        ))?;
        Ok(())
    }
}

/// The switch forwards in kernel threads of its own at real-time priority (threaded NAPI on
/// its port, which has an XDP program), as a real switch forwards on its own silicon: without
/// it veth runs the port's receive and the bridge in the sending host's context, and the
/// hosts' CPU figures would include the switch's work. Threads are found by name; another
/// switch's port of the same name may match too (it would get the same priority).
fn threaded_port(switch: &Netns, port: &str) -> Result<()> {
    switch.sh(&format!("echo 1 > /sys/class/net/{port}/threaded"))?;
    // A thread's name is cut at 15 bytes.
    let prefix: String = format!("napi/{port}-").chars().take(15).collect();
    for entry in std::fs::read_dir("/proc")?.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<i32>().ok())
        else {
            continue;
        };
        let comm = std::fs::read_to_string(entry.path().join("comm")).unwrap_or_default();
        if comm.trim_end().starts_with(&prefix) {
            let param = libc::sched_param { sched_priority: 50 };
            // (One that has just gone with its namespace does not matter.)
            if unsafe { libc::sched_setscheduler(pid, libc::SCHED_FIFO, &param) } != 0
                && std::io::Error::last_os_error().raw_os_error() != Some(libc::ESRCH)
            {
                bail!(
                    "SCHED_FIFO for {}: {}",
                    comm.trim_end(),
                    std::io::Error::last_os_error()
                );
            }
        }
    }
    Ok(())
}

/// A switch (bridge `br0` in its own namespace) with hosts attached.
#[derive(Debug)]
pub struct Lan {
    pub hosts: Vec<Host>,
    pub switch: Netns,
}

impl Lan {
    /// Builds a LAN with hosts named `names`. Every switch port gets a gate with an empty
    /// table (it passes everything): on veth, a frame sent on by XDP_TX/XDP_REDIRECT only
    /// arrives if the receiving end runs an XDP program.
    pub fn new(takeover: &Takeover, names: &[&str]) -> Result<Self> {
        let switch = Netns::new("sw")?;
        let mut lan = Lan {
            hosts: Vec::new(),
            switch,
        };
        lan.switch.ip("link add br0 type bridge stp_state 0")?;
        lan.switch.ip("link set br0 up")?;
        for (i, name) in names.iter().enumerate() {
            let ns = Netns::new(name)?;
            let host = Host {
                name: name.to_string(),
                ns,
                index: i as u8,
            };
            let port = format!("p-{name}");
            crate::ip(&format!(
                "link add lan netns {} address {} type veth peer {port} netns {}",
                host.ns.name,
                host.mac(),
                lan.switch.name
            ))?;
            lan.switch.ip(&format!("link set {port} master br0 up"))?;
            host.ns.ip("link set lan up")?;
            host.add_addr(&host.addr4())?;
            host.add_addr(&host.addr6())?;
            // A partial checksum left by tx offload would be rejected after an XDP forward.
            host.ns.sh("ethtool -K lan tx off >/dev/null")?;
            takeover.ok(&lan.switch, &format!("attach --iface {port}"))?;
            threaded_port(&lan.switch, &port)?;
            lan.hosts.push(host);
        }
        for h in &lan.hosts {
            for o in &lan.hosts {
                if h.index != o.index {
                    h.static_neigh(&o.addr4(), &o.mac())?;
                    h.static_neigh(&o.addr6(), &o.mac())?;
                }
            }
        }
        for h in &lan.hosts {
            wait_oper_up(&h.ns, "lan")?;
        }
        Ok(lan)
    }

    pub fn host(&self, name: &str) -> &Host {
        self.hosts
            .iter()
            .find(|h| h.name == name)
            .unwrap_or_else(|| panic!("no host {name}"))
    }

    /// Cuts (or heals) the LAN between hosts `a` and `b` at the switch, both ways and without
    /// a carrier change: both still reach every other host (bridge port isolation).
    pub fn isolate(&self, a: &str, b: &str, on: bool) -> Result<()> {
        let on = if on { "on" } else { "off" };
        for h in [a, b] {
            self.switch
                .sh(&format!("bridge link set dev p-{h} isolated {on}"))?;
        }
        Ok(())
    }

    /// A direct veth `ded` between hosts `a` and `b` (the patent's dedicated line), with
    /// 10.78.0.<i+1>/24 and static neighbours.
    pub fn dedicated_line(&self, a: &str, b: &str) -> Result<()> {
        let (a, b) = (self.host(a), self.host(b));
        // Distinct interface indexes on the two ends. On one kernel (namespaces) the ends of
        // a veth with equal indexes count as non-urgent for linkwatch, whose rate limit is
        // global: b's carrier event then waits behind a's, up to a second. Two machines have a
        // linkwatch each; distinct indexes make the namespaces behave like them.
        crate::ip(&format!(
            "link add ded netns {} index 1001 address {} type veth peer ded netns {} index 1002 address {}",
            a.ns.name,
            a.ded_mac(),
            b.ns.name,
            b.ded_mac()
        ))?;
        for (h, o) in [(a, b), (b, a)] {
            h.ns.ip(&format!("addr add {}/24 dev ded", h.ded_addr4()))?;
            h.ns.ip("link set ded up")?;
            h.ns.sh("ethtool -K ded tx off >/dev/null")?;
            h.ns.ip(&format!(
                "neigh replace {} lladdr {} dev ded nud permanent",
                o.ded_addr4(),
                o.ded_mac()
            ))?;
        }
        wait_oper_up(&a.ns, "ded")?;
        wait_oper_up(&b.ns, "ded")
    }
}

/// Polls `f` until it returns `Some`, or fails after `timeout` with `what`. For waiting on
/// an event that must happen, never for the absence of one.
pub fn wait_for<T>(
    what: &str,
    timeout: Duration,
    mut f: impl FnMut() -> Result<Option<T>>,
) -> Result<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f()? {
            return Ok(v);
        }
        if Instant::now() > deadline {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn wait_oper_up(ns: &Netns, iface: &str) -> Result<()> {
    wait_for(
        &format!("{iface} in {} to come up", ns.name),
        Duration::from_secs(10),
        || {
            let out = ns
                .ip(&format!("-o link show dev {iface}"))
                .context("ip link show")?;
            Ok(out.contains("state UP").then_some(()))
        },
    )
}
