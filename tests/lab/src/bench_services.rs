//! The services the failover benchmark puts on a and b: nginx as the agents' `[[service]]`s
//! (run and checked by them), or run by the bench beside keepalived, which watches it with a
//! `vrrp_script`.
use std::{
    os::unix::process::CommandExt as _,
    path::Path,
    process::{Child, Command, Stdio},
    time::Duration,
};

use anyhow::{bail, Context, Result};

use crate::{
    agents::LOGICAL,
    keepalived::Track,
    services::{http_get, nginx_conf},
    topology::{wait_for, Host},
    Takeover,
};

/// The port of the first service; further ones take the next ports.
pub const WEB_PORT: u16 = 80;

/// The agents' HTTP check on every service: interval and timeout (ms), fall. A check on
/// loopback answers in well under a millisecond: 5 ms is ample, and a hang is found one
/// timeout after the check that meets it starts, not one interval.
pub const CHECK_INTERVAL_MS: u32 = 10;
pub const CHECK_TIMEOUT_MS: u32 = 5;
pub const CHECK_FALL: u32 = 2;

/// Until a failed instance is restarted, and until a recovered one takes its traffic back:
/// longer than a trial measures after the fault (b's first reply + 50 ms), so that a trial
/// sees the move to b, not the restart's start-up on these shared CPUs nor the return.
const BACKOFF: &str = "200ms";
const HOLD: &str = "1s";

/// The `[[service]]` sections of `me`: one nginx per port (`web`, then `web1`, `web2`, …)
/// on the logical address, each checked by HTTP every [`CHECK_INTERVAL_MS`], their files
/// under `dir/<me>/`.
pub fn agent_services(dir: &Path, me: &Host, ports: &[u16]) -> Result<String> {
    let mut out = String::new();
    for (i, port) in ports.iter().enumerate() {
        let name = service_name(i);
        let conf = nginx_conf(&dir.join(&me.name).join(&name), LOGICAL, *port, &me.name)?;
        out += &format!(
            r#"
[[service]]
name = "{name}"
address = "{LOGICAL}"
protocol = "tcp"
port = {port}
run = {{ command = ["/usr/sbin/nginx", "-c", "{conf}"], stop_timeout = "100ms" }}

[[service.check]]
type = "http"
interval = "{CHECK_INTERVAL_MS}ms"
timeout = "{CHECK_TIMEOUT_MS}ms"
fall = {CHECK_FALL}
rise = 2

[service.recovery]
restarts = 3
backoff = "{BACKOFF}"
hold = "{HOLD}"
"#,
            conf = conf.display(),
        );
    }
    Ok(out)
}

/// The name of the `i`-th service of [`agent_services`].
pub fn service_name(i: usize) -> String {
    match i {
        0 => "web".into(),
        _ => format!("web{i}"),
    }
}

/// `host`'s agent's components, from `takeover status --json`.
fn components(t: &Takeover, host: &Host) -> Result<Vec<serde_json::Value>> {
    let st: serde_json::Value = serde_json::from_str(&t.ok(&host.ns, "status --json")?)?;
    Ok(st["components"].as_array().cloned().unwrap_or_default())
}

/// Waits until every service of `host` (`n` of them) runs, is normal and may serve, and
/// its peers' instances are normal too: a fault now has somewhere to go.
pub fn wait_services_ready(t: &Takeover, host: &Host, n: usize) -> Result<()> {
    wait_for(
        &format!("{}'s services ready", host.name),
        Duration::from_secs(15),
        || {
            // Not answering yet (still starting) is not ready, not a failure.
            let Ok(comps) = components(t, host) else {
                return Ok(None);
            };
            let ready = (0..n).all(|i| {
                comps.iter().any(|c| {
                    c["name"] == service_name(i).as_str()
                        && c["state"] == "normal"
                        && c["can_serve"] == true
                        && c["pid"].is_u64()
                        && c["peers"]
                            .as_object()
                            .is_some_and(|p| p.values().all(|s| s == "normal"))
                })
            });
            Ok(ready.then_some(()))
        },
    )
}

/// The pid of `host`'s instance of the first service (its process group's too: the agent
/// starts each in a session of its own).
pub fn web_pid(t: &Takeover, host: &Host) -> Result<i32> {
    components(t, host)?
        .iter()
        .find(|c| c["name"] == "web")
        .and_then(|c| c["pid"].as_i64())
        .map(|p| p as i32)
        .with_context(|| format!("no pid for {}'s web in its status", host.name))
}

/// An nginx the bench runs itself on `host` (beside keepalived), answering `GET /` with the
/// host's name on the logical address (bound before the address is here:
/// `ip_nonlocal_bind`) and on 127.0.0.1, where keepalived's check asks it. In a process
/// group of its own; SIGKILLed as a group on drop.
pub struct Nginx {
    child: Child,
}

impl Nginx {
    pub fn start(host: &Host, dir: &Path) -> Result<Self> {
        let dir = dir.join(format!("nginx-{}", host.name));
        let conf = nginx_conf(&dir, LOGICAL, WEB_PORT, &host.name)?;
        let text = std::fs::read_to_string(&conf)?;
        let listen = format!("listen {LOGICAL}:{WEB_PORT};");
        if !text.contains(&listen) {
            bail!("{} has no {listen:?}", conf.display());
        }
        std::fs::write(
            &conf,
            text.replace(
                &listen,
                &format!("{listen}\n        listen 127.0.0.1:{WEB_PORT};"),
            ),
        )?;
        host.ns.sh("sysctl -qw net.ipv4.ip_nonlocal_bind=1")?;
        let child = Command::new("nsenter")
            .arg(format!("--net={}", host.ns.path().display()))
            .args(["/usr/sbin/nginx", "-c"])
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .context("starting nginx (cargo xtask setup installs it)")?;
        let nginx = Self { child };
        wait_for(
            &format!("nginx on {}", host.name),
            Duration::from_secs(10),
            || {
                Ok(
                    (http_get(&host.ns, "127.0.0.1", WEB_PORT, Duration::from_millis(100))?
                        .as_deref()
                        == Some(host.name.as_str()))
                    .then_some(()),
                )
            },
        )?;
        Ok(nginx)
    }

    /// Its master's pid, which is its process group's.
    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // SIGKILL ends a stopped process too.
        unsafe { libc::kill(-self.pid(), libc::SIGKILL) };
        let _ = self.child.wait();
    }
}

/// keepalived's watch on [`Nginx`], as fast as Debian's 2.2.7 allows: a `vrrp_script` runs
/// every second at the most (whole seconds), failing at the first miss; curl gives up after
/// half a second (a hung nginx accepts connections in its kernel and never answers).
pub fn keepalived_track() -> Track {
    Track {
        script: format!("/usr/bin/curl -sf -o /dev/null -m 0.5 http://127.0.0.1:{WEB_PORT}/"),
        interval_s: 1,
        timeout_s: 1,
        fall: 1,
        rise: 1,
        weight: None,
    }
}
