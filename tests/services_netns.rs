//! Services as monitored components (issue 11), with real agents and real services from
//! Debian in namespaces: nginx (HTTP over TCP) and dnsmasq (DNS over UDP) on the logical
//! address, run by the agents on both servers `a` and `b`; client `cli`. Faults are real:
//! SIGKILL, SIGSTOP, a port closed by a reload. Checked from outside: which host answers,
//! the client's ARP entry, the agents' status and logs.
use std::{path::PathBuf, time::Duration};

use anyhow::{bail, Result};
use takeover_lab::{
    agents::{with_logs, Agent, Cluster, Timing, LOGICAL},
    services::{dns_who, dnsmasq_conf, http_get, nginx_conf, nginx_daemon_conf},
    topology::{wait_for, Host, Lan},
    Takeover,
};

const WAIT: Duration = Duration::from_secs(20);
const ASK: Duration = Duration::from_millis(300);

fn takeover() -> Takeover {
    Takeover::new(env!("CARGO_BIN_EXE_takeover"))
}

/// How each node's `web` recovers, and what its services look like.
#[derive(Clone)]
struct Recovery {
    restarts: u32,
    escalate: bool,
    critical: bool,
    hold: &'static str,
}

impl Default for Recovery {
    fn default() -> Self {
        Self {
            restarts: 3,
            escalate: false,
            critical: false,
            hold: "300ms",
        }
    }
}

/// The `[[service]]` sections of `me`: `web` (nginx, checked by HTTP every 50 ms) and `dns`
/// (dnsmasq, checked by a DNS query every 100 ms). `web_command` replaces nginx's command
/// (a node whose instance cannot run).
fn services(
    dir: &std::path::Path,
    me: &Host,
    r: &Recovery,
    web_command: Option<&str>,
) -> Result<String> {
    let web = nginx_conf(&dir.join(&me.name).join("web"), LOGICAL, 80, &me.name)?;
    let dns = dnsmasq_conf(&dir.join(&me.name).join("dns"), LOGICAL, &me.name)?;
    let web_command = web_command
        .map(str::to_string)
        .unwrap_or_else(|| format!(r#"["/usr/sbin/nginx", "-c", "{}"]"#, web.display()));
    Ok(format!(
        r#"
[[service]]
name = "web"
address = "{LOGICAL}"
protocol = "tcp"
port = 80
critical = {critical}
run = {{ command = {web_command}, stop_timeout = "1s" }}

[[service.check]]
type = "http"
interval = "50ms"
timeout = "50ms"
fall = 2
rise = 2

[service.recovery]
restarts = {restarts}
backoff = "50ms"
escalate = {escalate}
hold = "{hold}"

[[service]]
name = "dns"
address = "{LOGICAL}"
protocol = "udp"
port = 53
run = {{ command = ["/usr/sbin/dnsmasq", "--conf-file={dns}"] }}

[[service.check]]
type = "dns"
query = "who.test"
record = "txt"
interval = "100ms"
timeout = "100ms"
"#,
        critical = r.critical,
        restarts = r.restarts,
        escalate = r.escalate,
        hold = r.hold,
        dns = dns.display(),
    ))
}

/// Dropped in this order: the agents, their files, then the namespaces (which kill the
/// services the agents left running).
struct Setup {
    agents: Vec<Agent>,
    cluster: Cluster,
    lan: Lan,
}

impl Setup {
    fn new(recovery: &[Recovery; 2], web_command: [Option<&str>; 2]) -> Result<Self> {
        let s = Self::with(|dir, me, i| services(dir, me, &recovery[i], web_command[i]))?;
        s.logged(s.wait_web("a"))?;
        s.logged(s.wait_dns("a"))?;
        Ok(s)
    }

    /// Agents on `a` and `b` with the `[[service]]` sections `extra` writes for each (given
    /// the cluster's directory, the node and its index).
    fn with(extra: impl Fn(&std::path::Path, &Host, usize) -> Result<String>) -> Result<Self> {
        let t = takeover();
        let lan = Lan::new(&t, &["cli", "a", "b"])?;
        lan.dedicated_line("a", "b")?;
        let cluster = Cluster::new(&lan, Timing::default())?;
        let (a, b) = (lan.host("a"), lan.host("b"));
        let mut agents = Vec::new();
        for (i, (me, peer)) in [(a, b), (b, a)].into_iter().enumerate() {
            let extra = extra(&cluster.dir, me, i)?;
            agents.push(cluster.start_with(&t, me, peer, |c| c + &extra)?);
        }
        Ok(Setup {
            agents,
            cluster,
            lan,
        })
    }

    fn cli(&self) -> &Host {
        self.lan.host("cli")
    }

    fn host(&self, name: &str) -> &Host {
        self.lan.host(name)
    }

    /// Adds both agents' logs to an error.
    fn logged<T>(&self, r: Result<T>) -> Result<T> {
        with_logs(&self.agents, r)
    }

    fn web(&self) -> Result<Option<String>> {
        http_get(&self.cli().ns, LOGICAL, 80, ASK)
    }

    fn dns(&self) -> Result<Option<String>> {
        dns_who(&self.cli().ns, LOGICAL, ASK)
    }

    fn wait_web(&self, who: &str) -> Result<()> {
        wait_for(&format!("web answered by {who}"), WAIT, || {
            Ok((self.web()?.as_deref() == Some(who)).then_some(()))
        })
    }

    fn wait_dns(&self, who: &str) -> Result<()> {
        wait_for(&format!("dns answered by {who}"), WAIT, || {
            Ok((self.dns()?.as_deref() == Some(who)).then_some(()))
        })
    }

    /// `takeover status --json` on `host`.
    fn status(&self, host: &str) -> Result<serde_json::Value> {
        let out = takeover().ok(&self.host(host).ns, "status --json")?;
        Ok(serde_json::from_str(&out)?)
    }

    /// The status's component `name` on `host`.
    /// Waits until `host`'s instance of `name` has passed its checks (risen): a fault a
    /// check must find is injected only then (before, the start itself is still on trial).
    fn wait_normal(&self, host: &str, name: &str) -> Result<()> {
        self.logged(wait_for(&format!("{host}'s {name} normal"), WAIT, || {
            Ok((self.component(host, name)?["state"] == "normal").then_some(()))
        }))
    }

    fn component(&self, host: &str, name: &str) -> Result<serde_json::Value> {
        let st = self.status(host)?;
        st["components"]
            .as_array()
            .and_then(|c| c.iter().find(|x| x["name"] == name).cloned())
            .ok_or_else(|| anyhow::anyhow!("no component {name} in {st}"))
    }

    /// The gate of `addr` + service (`tcp/80`, or None for the address) in `host`'s status.
    fn gate(&self, host: &str, service: Option<&str>) -> Result<String> {
        let st = self.status(host)?;
        st["addresses"]
            .as_array()
            .and_then(|a| {
                a.iter()
                    .find(|x| x["service"].as_str() == service)
                    .and_then(|x| x["gate"].as_str())
                    .map(String::from)
            })
            .ok_or_else(|| anyhow::anyhow!("no resource {service:?} in {st}"))
    }

    /// The pid of `host`'s instance of `service`, once it runs.
    fn pid(&self, host: &str, service: &str) -> Result<i32> {
        wait_for(&format!("{service} on {host} running"), WAIT, || {
            Ok(self.component(host, service)?["pid"]
                .as_i64()
                .map(|p| p as i32))
        })
    }

    /// The client's ARP entry for the logical address (its MAC), if it has one.
    fn client_arp(&self) -> Result<Option<String>> {
        let out = self.cli().ns.ip(&format!("neigh show {LOGICAL} dev lan"))?;
        Ok(out
            .split_whitespace()
            .skip_while(|w| *w != "lladdr")
            .nth(1)
            .map(String::from))
    }

    /// SIGKILLs a's nginx and waits until both services are answered by `host` (the whole
    /// address went there).
    fn kill_web_and_wait_both_on(&self, host: &str) -> Result<()> {
        signal(self.pid("a", "web")?, libc::SIGKILL)?;
        self.logged(self.wait_dns(host))?;
        self.logged(self.wait_web(host))
    }

    /// The interface `host`'s gate sends web's traffic on by (None: the LAN port it came
    /// in by), read from its pinned table.
    fn forwarded_via(&self, host: &str) -> Result<Option<String>> {
        let entry = takeover()
            .entry(&self.host(host).ns, "lan", LOGICAL, Some("tcp/80"))?
            .ok_or_else(|| anyhow::anyhow!("no gate entry for {LOGICAL} tcp/80"))?;
        if entry["state"] != "forward" {
            bail!("web's gate on {host} does not forward: {entry}");
        }
        Ok(entry["forward"]["via"].as_str().map(String::from))
    }

    fn nginx_dir(&self, host: &str) -> PathBuf {
        self.cluster.dir.join(host).join("web")
    }
}

impl Drop for Setup {
    /// An OCF agent's nginx daemonizes, outside what the agent records: stopped here, by
    /// the pid its own pid file holds (if that process is still this test's nginx).
    fn drop(&mut self) {
        self.agents.iter_mut().for_each(Agent::kill);
        for host in ["a", "b"] {
            let dir = self.nginx_dir(host);
            let Some(pid) = std::fs::read_to_string(dir.join("nginx.pid"))
                .ok()
                .and_then(|p| p.trim().parse::<i32>().ok())
            else {
                continue;
            };
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            if pid > 1 && String::from_utf8_lossy(&cmdline).contains(&*dir.to_string_lossy()) {
                let _ = signal(-pid, libc::SIGKILL);
            }
        }
    }
}

fn signal(pid: i32, sig: i32) -> Result<()> {
    if unsafe { libc::kill(pid, sig) } != 0 {
        bail!("kill({pid}, {sig}): {}", std::io::Error::last_os_error());
    }
    Ok(())
}

/// How often `host`'s agent logged a change of `web`'s gate to `gate`.
fn web_gate_changes(agent: &Agent, gate: &str) -> usize {
    agent
        .events()
        .iter()
        .filter(|e| {
            e["event"] == "gate_changed"
                && e["resource"].as_str() == Some(&format!("{LOGICAL} tcp/80"))
                && e["gate"] == gate
        })
        .count()
}

#[test]
fn a_killed_service_is_served_by_the_peer_alone_and_comes_back_after_its_restart() -> Result<()> {
    let s = Setup::new(&[Recovery::default(), Recovery::default()], [None, None])?;
    let arp = s.client_arp()?;
    assert_eq!(arp.as_deref(), Some(s.host("a").mac().as_str()));
    let takeovers = s.agents[0].events().len();
    let pid = s.pid("a", "web")?;
    signal(pid, libc::SIGKILL)?;
    // Served by b's instance, through a's gate (the address does not move).
    s.logged(s.wait_web("b"))?;
    assert_eq!(s.gate("a", Some("tcp/80"))?, "forward to b");
    assert_eq!(s.gate("b", Some("tcp/80"))?, "receive from a");
    assert_eq!(s.gate("a", None)?, "open");
    // Over the dedicated line (it works): a's gate redirects into it.
    assert_eq!(s.forwarded_via("a")?.as_deref(), Some("ded"));
    // The other service stays local, and the client's ARP entry is a's still.
    assert_eq!(s.dns()?.as_deref(), Some("a"));
    assert_eq!(s.client_arp()?, arp);
    // Restarted, risen, held: back on a.
    s.logged(s.wait_web("a"))?;
    let web = s.component("a", "web")?;
    if web["fault"] != "exited" {
        s.logged::<()>(Err(anyhow::anyhow!(
            "the exit is seen by the kernel, not by a check: {web}"
        )))?;
    }
    assert_eq!(web["state"], "normal", "{web}");
    assert_eq!(web["restarts"], 1, "{web}");
    assert_ne!(web["pid"].as_i64(), Some(i64::from(pid)));
    assert_eq!(s.client_arp()?, arp);
    // No address moved: no takeover, handover or announcement since the kill.
    let after: Vec<_> = s.agents[0].events().into_iter().skip(takeovers).collect();
    assert!(
        after
            .iter()
            .all(|e| e["event"] != "takeover" && e["event"] != "handover"),
        "{after:?}"
    );
    assert!(s.agents[1]
        .events()
        .iter()
        .all(|e| e["event"] != "takeover" || e["resource"].as_str() != Some(LOGICAL)));
    Ok(())
}

#[test]
fn a_hung_service_is_caught_by_its_check_and_restarted() -> Result<()> {
    let s = Setup::new(&[Recovery::default(), Recovery::default()], [None, None])?;
    s.wait_normal("a", "web")?;
    s.wait_normal("b", "web")?;
    let pid = s.pid("a", "web")?;
    // The whole instance (master and worker, its own process group) stops answering.
    signal(-pid, libc::SIGSTOP)?;
    s.logged(s.wait_web("b"))?;
    let web = s.component("a", "web")?;
    assert_eq!(web["fault"], "check1", "{web}");
    assert_eq!(s.dns()?.as_deref(), Some("a"));
    // The restart kills what was stopped and starts it again.
    s.logged(s.wait_web("a"))?;
    assert!(
        !std::path::Path::new(&format!("/proc/{pid}")).exists()
            || std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .map(|st| st.contains(") Z"))
                .unwrap_or(true),
        "the stopped instance is gone"
    );
    Ok(())
}

#[test]
fn a_port_closed_under_a_live_process_is_caught_and_the_udp_service_stays() -> Result<()> {
    let s = Setup::new(&[Recovery::default(), Recovery::default()], [None, None])?;
    s.wait_normal("a", "web")?;
    s.wait_normal("b", "web")?;
    let pid = s.pid("a", "web")?;
    // Reloaded onto another port: the process lives, port 80 is closed.
    let conf = s.nginx_dir("a").join("nginx.conf");
    let text = std::fs::read_to_string(&conf)?;
    std::fs::write(&conf, text.replace(":80;", ":8080;"))?;
    signal(pid, libc::SIGHUP)?;
    s.logged(s.wait_web("b"))?;
    assert_eq!(s.dns()?.as_deref(), Some("a"));
    assert_eq!(s.gate("a", Some("udp/53"))?, "open");
    // Put back: the restart serves port 80 again.
    std::fs::write(&conf, text)?;
    s.logged(s.wait_web("a"))?;
    Ok(())
}

#[test]
fn a_killed_udp_service_goes_to_the_peer_and_the_tcp_one_stays() -> Result<()> {
    let s = Setup::new(&[Recovery::default(), Recovery::default()], [None, None])?;
    let pid = s.pid("a", "dns")?;
    signal(pid, libc::SIGKILL)?;
    s.logged(s.wait_dns("b"))?;
    assert_eq!(s.web()?.as_deref(), Some("a"));
    s.logged(s.wait_dns("a"))?;
    Ok(())
}

#[test]
fn with_the_standbys_instance_down_too_nothing_moves_and_the_status_says_so() -> Result<()> {
    // b's web cannot run at all: it fails its starts and its budget.
    let broken = r#"["/bin/false"]"#;
    let stay = Recovery {
        restarts: 0,
        ..Recovery::default()
    };
    let s = Setup::new(&[stay.clone(), Recovery::default()], [None, Some(broken)])?;
    wait_for("b's web failed", WAIT, || {
        Ok((s.component("b", "web")?["state"] == "failed").then_some(()))
    })?;
    assert_eq!(
        s.component("a", "web")?["peers"]["b"].as_str(),
        Some("failed, cannot serve")
    );
    let pid = s.pid("a", "web")?;
    signal(pid, libc::SIGKILL)?;
    wait_for("a's web failed", WAIT, || {
        Ok((s.component("a", "web")?["state"] == "failed").then_some(()))
    })?;
    // Nothing moves: the gate stays open here (nobody answers on port 80) and says why.
    assert_eq!(s.gate("a", Some("tcp/80"))?, "open");
    let st = s.status("a")?;
    let web = st["addresses"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["service"] == "tcp/80")
        .unwrap()
        .clone();
    assert!(
        web["note"].as_str().is_some_and(|n| n.contains("no peer")),
        "{web}"
    );
    let text = takeover().ok(&s.host("a").ns, "status")?;
    assert!(text.contains("no peer's can serve"), "{text}");
    assert!(s.agents[0].logged("no_instance", &[("resource", &format!("{LOGICAL} tcp/80"))]));
    assert_eq!(s.web()?, None);
    assert_eq!(s.dns()?.as_deref(), Some("a"));
    Ok(())
}

#[test]
fn a_service_that_cannot_recover_escalates_to_a_takeover_of_the_whole_address() -> Result<()> {
    let give_up = Recovery {
        restarts: 0,
        escalate: true,
        ..Recovery::default()
    };
    let s = Setup::new(&[give_up, Recovery::default()], [None, None])?;
    // The whole address goes to b: both services answered there, the client told.
    s.kill_web_and_wait_both_on("b")?;
    assert_eq!(s.gate("b", None)?, "open");
    assert!(s.agents[0].logged("escalated", &[("service", "web")]));
    wait_for("the client's ARP entry on b", WAIT, || {
        Ok((s.client_arp()?.as_deref() == Some(s.host("b").mac().as_str())).then_some(()))
    })?;
    Ok(())
}

#[test]
fn a_critical_service_takes_the_address_over_at_its_first_failure() -> Result<()> {
    let critical = Recovery {
        critical: true,
        ..Recovery::default()
    };
    let s = Setup::new(&[critical.clone(), critical], [None, None])?;
    s.kill_web_and_wait_both_on("b")?;
    // Restarted and past its hold, a is fit again: its address comes back by preempt, as
    // in any failback.
    s.logged(s.wait_web("a"))?;
    assert_eq!(s.gate("a", None)?, "open");
    assert_eq!(s.dns()?.as_deref(), Some("a"));
    Ok(())
}

#[test]
fn a_flapping_service_does_not_ping_pong() -> Result<()> {
    let slow = Recovery {
        restarts: 10,
        hold: "2s",
        ..Recovery::default()
    };
    let s = Setup::new(&[slow.clone(), slow], [None, None])?;
    let (forwards, opens) = (
        web_gate_changes(&s.agents[0], "forward"),
        web_gate_changes(&s.agents[0], "open"),
    );
    // Killed three times, each soon after its restart (within the hold): its traffic goes
    // to b once and stays there until a's instance has held for the hold time.
    for _ in 0..3 {
        let pid = s.pid("a", "web")?;
        signal(pid, libc::SIGKILL)?;
        s.logged(s.wait_web("b"))?;
        wait_for("a's web restarted", WAIT, || {
            Ok((s.component("a", "web")?["pid"]
                .as_i64()
                .is_some_and(|p| p != i64::from(pid)))
            .then_some(()))
        })?;
    }
    s.logged(s.wait_web("a"))?;
    let web: Vec<_> = s.agents[0]
        .events()
        .into_iter()
        .filter(|e| {
            e["resource"].as_str() == Some(&format!("{LOGICAL} tcp/80")) || e["service"] == "web"
        })
        .collect();
    assert_eq!(
        web_gate_changes(&s.agents[0], "forward") - forwards,
        1,
        "{web:#?}"
    );
    assert_eq!(
        web_gate_changes(&s.agents[0], "open") - opens,
        1,
        "{web:#?}"
    );
    Ok(())
}

#[test]
fn a_service_fault_with_the_dedicated_line_down_is_forwarded_over_the_lan() -> Result<()> {
    let s = Setup::new(&[Recovery::default(), Recovery::default()], [None, None])?;
    s.host("a").ns.ip("link set ded down")?;
    let pid = s.pid("a", "web")?;
    signal(pid, libc::SIGKILL)?;
    s.logged(s.wait_web("b"))?;
    assert_eq!(s.gate("a", None)?, "open");
    // XDP_TX back out of the LAN port, to b's LAN MAC.
    assert_eq!(s.forwarded_via("a")?, None);
    // The line back: what is still forwarded moves onto it.
    s.host("a").ns.ip("link set ded up")?;
    wait_for("web forwarded over the line again", WAIT, || {
        Ok((s.forwarded_via("a").ok().flatten().as_deref() == Some("ded")).then_some(()))
    })?;
    assert_eq!(s.web()?.as_deref(), Some("b"));
    s.logged(s.wait_web("a"))?;
    Ok(())
}

#[test]
fn a_pacemaker_ocf_agent_starts_monitors_and_recovers_the_service() -> Result<()> {
    // Debian's ocf:heartbeat:nginx with its OCF environment: it starts nginx (daemonized,
    // as it expects), its monitor is the check, its stop and start the restart.
    let s = Setup::with(|dir, me, _| {
        let conf = nginx_daemon_conf(&dir.join(&me.name).join("web"), LOGICAL, 80, &me.name)?;
        Ok(format!(
            r#"
[[service]]
name = "web"
address = "{LOGICAL}"
protocol = "tcp"
port = 80
ocf = {{ agent = "heartbeat:nginx", params = {{ configfile = "{conf}", httpd = "/usr/sbin/nginx" }}, timeout = "10s" }}

[[service.check]]
type = "ocf"
interval = "300ms"
timeout = "300ms"
fall = 1
rise = 1

[service.recovery]
restarts = 3
backoff = "50ms"
hold = "300ms"
"#,
            conf = conf.display()
        ))
    })?;
    s.logged(s.wait_web("a"))?;
    let pid: i32 = std::fs::read_to_string(s.nginx_dir("a").join("nginx.pid"))?
        .trim()
        .parse()?;
    // The master and its worker: the OCF monitor finds the master gone.
    signal(-pid, libc::SIGKILL).or_else(|_| signal(pid, libc::SIGKILL))?;
    s.logged(s.wait_web("b"))?;
    let web = s.component("a", "web")?;
    assert_eq!(web["fault"], "check1", "{web}");
    // The agent's stop and start bring it back.
    s.logged(s.wait_web("a"))?;
    assert_eq!(s.component("a", "web")?["state"], "normal");
    Ok(())
}

/// Continues a stopped process when dropped (also when the test fails).
struct Frozen(i32);

impl Drop for Frozen {
    fn drop(&mut self) {
        let _ = signal(self.0, libc::SIGCONT);
    }
}

#[test]
fn a_service_that_exits_goes_to_the_peer_even_while_its_agent_is_frozen() -> Result<()> {
    let s = Setup::new(&[Recovery::default(), Recovery::default()], [None, None])?;
    // The data plane holds what to do when the process exits.
    wait_for("a's exit plan for web armed", WAIT, || {
        Ok((s.component("a", "web")?["exit_plan"] == "forward to b").then_some(()))
    })?;
    let pid = s.pid("a", "web")?;
    let agent = s.agents[0].child.id() as i32;
    signal(agent, libc::SIGSTOP)?;
    let frozen = Frozen(agent);
    signal(-pid, libc::SIGKILL)?;
    // Served by b while a's agent cannot have done anything: the exit tracepoint did it.
    s.logged(s.wait_web("b"))?;
    drop(frozen);
    // The agent catches up: restarts its instance and takes the traffic back.
    s.logged(s.wait_web("a"))?;
    let web = s.component("a", "web")?;
    assert_eq!(web["fault"], "exited", "{web}");
    Ok(())
}

/// With a storage area, a service's handoff record is written where the service is served
/// (its gate open there), under its address's epoch, and read from any node; the other node
/// is refused, told who serves it.
#[test]
fn a_service_leaves_its_handoff_where_it_is_served_and_only_there() -> Result<()> {
    let dev = takeover_lab::storage::LoopDevice::new("svc-area", 8)?;
    takeover().ok_plain(&format!("storage init {} --nodes a,b", dev.dev))?;
    let area = dev.config("10ms", "200ms");
    let s = Setup::with(|dir, me, _| Ok(services(dir, me, &Recovery::default(), None)? + &area))?;
    s.logged(s.wait_web("a"))?;
    let resource = format!("{LOGICAL} tcp/80");
    let handoff = |host: &str, args: &[&str]| {
        takeover()
            .cmd(&s.lan.host(host).ns)
            .arg("handoff")
            .args(args)
            .output()
    };
    let put = handoff("a", &["put", &resource, "sessions=7"])?;
    assert!(
        put.status.success(),
        "{}",
        String::from_utf8_lossy(&put.stderr)
    );
    let refused = handoff("b", &["put", &resource, "sessions=0"])?;
    let why = String::from_utf8_lossy(&refused.stderr);
    assert!(
        !refused.status.success() && why.contains("a serves it"),
        "{why}"
    );
    let got = handoff("b", &["get", &resource, "sessions"])?;
    assert_eq!(String::from_utf8_lossy(&got.stdout).trim(), "7");
    Ok(())
}
