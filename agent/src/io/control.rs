//! The control socket: `takeover status` asks the running agent for its state table.
//!
//! A Unix stream socket at `/run/takeover/<netns>/control.sock`, mode 0600 (root only). The
//! client writes one line (`status`, or `switchover ADDR NODE`), the agent answers one JSON
//! document and closes.
use std::{path::PathBuf, time::Duration};

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};
use tokio::{
    io::{AsyncBufReadExt, AsyncWriteExt, BufReader},
    net::UnixListener,
    sync::oneshot,
};

use crate::{
    core::node::{Core, FenceState},
    sys::netns,
};

pub fn socket_path() -> Result<PathBuf> {
    Ok(PathBuf::from(format!(
        "/run/takeover/{}/control.sock",
        netns::current_id()?
    )))
}

/// A request from a client, answered by the agent's loop (which owns the core).
pub struct Request {
    pub command: Command,
    pub reply: oneshot::Sender<Value>,
}

pub enum Command {
    Status,
    Switchover { addr: String, to: String },
}

/// Listens on the control socket; each request is handed to the agent's loop by `deliver`
/// (false: the loop has gone).
pub fn listen(deliver: impl Fn(Request) -> bool + Clone + Send + 'static) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let path = socket_path()?;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    // A socket file left by a previous agent (killed) is stale: replace it.
    let _ = std::fs::remove_file(&path);
    let listener =
        UnixListener::bind(&path).with_context(|| format!("binding {}", path.display()))?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let deliver = deliver.clone();
            tokio::spawn(async move {
                let (r, mut w) = stream.into_split();
                let mut line = String::new();
                let read = tokio::time::timeout(
                    Duration::from_secs(2),
                    BufReader::new(r).read_line(&mut line),
                )
                .await;
                let words: Vec<&str> = line.split_whitespace().collect();
                let command = match (read, words.as_slice()) {
                    (Ok(Ok(_)), ["status"]) => Some(Command::Status),
                    (Ok(Ok(_)), ["switchover", addr, to]) => Some(Command::Switchover {
                        addr: addr.to_string(),
                        to: to.to_string(),
                    }),
                    _ => None,
                };
                let answer = match command {
                    Some(command) => {
                        let (reply, rx) = oneshot::channel();
                        if !deliver(Request { command, reply }) {
                            return;
                        }
                        rx.await
                            .unwrap_or_else(|_| json!({"error": "agent stopping"}))
                    }
                    None => {
                        json!({"error": "unknown request; send `status` or `switchover ADDR NODE`"})
                    }
                };
                let _ = w.write_all(format!("{answer}\n").as_bytes()).await;
            });
        }
    });
    Ok(())
}

fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e6).round() / 1e3
}

/// The state table as JSON (field names are a stable interface for scripts).
/// Datagrams the agent has read from the peers, by where it found them: the gates' ring
/// (periodic heartbeats, taken off the wire by XDP) or its sockets (urgent heartbeats, the
/// peers' kernels' answers, and whatever the ring did not take).
#[derive(Clone, Copy, Debug, Default, serde::Serialize)]
pub struct Received {
    pub gate: u64,
    pub socket: u64,
}

pub fn status(core: &Core, now: Duration, lan: &str, received: &Received) -> Value {
    let cfg = core.config();
    let me = cfg.me;
    let addresses: Vec<Value> = cfg
        .resources
        .iter()
        .enumerate()
        .map(|(a, spec)| {
            json!({
                "address": spec.ip.to_string(),
                "owner": cfg.nodes[spec.preference[0]],
                "preference": spec.preference.iter().map(|&n| cfg.nodes[n].clone()).collect::<Vec<_>>(),
                "gate": core.gate(a).describe(cfg),
                "served_by": core.server(a).map(|n| cfg.nodes[n].clone()),
                "epoch": core.epoch(a),
            })
        })
        .collect();
    let peers: Vec<Value> = (0..cfg.nodes.len())
        .filter(|&p| p != me)
        .map(|p| {
            let paths: Vec<Value> = core
                .path_status(p)
                .iter()
                .enumerate()
                .map(|(i, (heard, rtt))| {
                    json!({
                        "path": if cfg.paths > 1 && i == 0 { "dedicated" } else { "lan" },
                        "last_heard_ms_ago": heard.map(|h| ms(now.saturating_sub(h))),
                        "rtt_ms": rtt.map(ms),
                    })
                })
                .collect();
            json!({
                "name": cfg.nodes[p],
                "state": if core.peer_alive(p) { "alive" } else { "dead" },
                "since_ms_ago": core.peer_since(p).map(|s| ms(now.saturating_sub(s))),
                "fence": match core.fence_state(p) {
                    FenceState::None => "none",
                    FenceState::Pending => "pending",
                    FenceState::Fenced => "fenced",
                    FenceState::Failed(_) => "failed",
                },
                "paths": paths,
            })
        })
        .collect();
    json!({
        "node": cfg.nodes[me],
        "ready": core.is_ready(),
        "lan": { "interface": lan, "state": if core.lan_up() { "up" } else { "down" } },
        "addresses": addresses,
        "peers": peers,
        "received": received,
        "rejected": core.rejected().0,
    })
}

/// Asks the agent of the current network namespace for its status.
pub fn query() -> Result<Value> {
    ask("status")
}

/// Asks the agent of the current network namespace to move `addr` to node `to`.
pub fn switchover(addr: &str, to: &str) -> Result<Value> {
    ask(&format!("switchover {addr} {to}"))
}

fn ask(request: &str) -> Result<Value> {
    use std::io::{BufRead, Write};
    let path = socket_path()?;
    let mut stream = std::os::unix::net::UnixStream::connect(&path).with_context(|| {
        format!(
            "no agent is running in this network namespace ({} unreachable)",
            path.display()
        )
    })?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    stream.write_all(format!("{request}\n").as_bytes())?;
    let mut line = String::new();
    std::io::BufReader::new(stream).read_line(&mut line)?;
    let v: Value = serde_json::from_str(&line).context("the agent's answer is not JSON")?;
    if let Some(e) = v.get("error") {
        bail!("the agent says: {e}");
    }
    Ok(v)
}

/// A readable rendering of `status` for people.
pub fn render(v: &Value) -> String {
    let mut out = format!(
        "node {}  ready {}  LAN {} {}\n",
        v["node"].as_str().unwrap_or("?"),
        v["ready"],
        v["lan"]["interface"].as_str().unwrap_or("?"),
        v["lan"]["state"].as_str().unwrap_or("?")
    );
    out.push_str("\nADDRESS                 OWNER      GATE    SERVED BY  EPOCH\n");
    for a in v["addresses"].as_array().into_iter().flatten() {
        out.push_str(&format!(
            "{:<23} {:<10} {:<7} {:<10} {}\n",
            a["address"].as_str().unwrap_or(""),
            a["owner"].as_str().unwrap_or(""),
            a["gate"].as_str().unwrap_or(""),
            a["served_by"].as_str().unwrap_or("-"),
            a["epoch"]
        ));
    }
    out.push_str("\nPEER       STATE  FENCE    PATH       LAST HEARD  RTT\n");
    for p in v["peers"].as_array().into_iter().flatten() {
        for (i, path) in p["paths"].as_array().into_iter().flatten().enumerate() {
            let (name, state, fence) = if i == 0 {
                (
                    p["name"].as_str().unwrap_or(""),
                    p["state"].as_str().unwrap_or(""),
                    p["fence"].as_str().unwrap_or(""),
                )
            } else {
                ("", "", "")
            };
            let age = path["last_heard_ms_ago"]
                .as_f64()
                .map(|x| format!("{x:.1} ms"))
                .unwrap_or_else(|| "never".into());
            let rtt = path["rtt_ms"]
                .as_f64()
                .map(|x| format!("{x:.3} ms"))
                .unwrap_or_else(|| "-".into());
            out.push_str(&format!(
                "{name:<10} {state:<6} {fence:<8} {:<10} {age:<11} {rtt}\n",
                path["path"].as_str().unwrap_or("")
            ));
        }
    }
    let rejected = v["rejected"].as_object().map(|m| {
        m.iter()
            .map(|(k, n)| format!("{k} {n}"))
            .collect::<Vec<_>>()
            .join(", ")
    });
    out.push_str(&format!(
        "\ndatagrams read: {} from the gates' ring, {} from sockets\n",
        v["received"]["gate"], v["received"]["socket"]
    ));
    out.push_str(&format!(
        "rejected datagrams: {}\n",
        rejected
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| "none".into())
    ));
    out
}
