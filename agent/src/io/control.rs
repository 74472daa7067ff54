//! The control socket: `takeover status` asks the running agent for its state table.
//!
//! A Unix stream socket at `/run/takeover/<netns>/control.sock`, mode 0600 (root only). The
//! client writes one line (`status`, or `switchover ADDR NODE`), the agent answers one JSON
//! document and closes. Bounded: a line of at most `MAX_REQUEST` bytes, `MAX_CLIENTS` at
//! once, 2 s to send it; a switchover that could not happen is refused with the reason.
use std::{
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};
use tokio::{
    io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWriteExt, BufReader},
    net::{UnixListener, UnixStream},
    sync::{oneshot, Semaphore},
};

use crate::{
    core::node::{Core, NodeId, ResId},
    io::status::Status,
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
    Switchover {
        addr: String,
        to: String,
    },
    /// A service's handoff record (the storage area's), as a JSON line (`Handoff`).
    Handoff(Handoff),
}

/// `takeover handoff`: what a service leaves for its successor, through the agent, which
/// keeps it in the storage area under the resource's epoch. One JSON line:
/// `{"handoff": "put", "resource": "10.0.0.1", "values": {"k": "v"}}`, or `"get"` (with
/// `resource`, optionally `key`) or `"list"`.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Handoff {
    pub handoff: HandoffOp,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub values: std::collections::BTreeMap<String, String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HandoffOp {
    Put,
    Get,
    List,
}

/// At most this many clients at once: each holds a descriptor and a task until it is answered
/// (an idle one for up to `READ_TIMEOUT`). One more is told so at once rather than kept
/// waiting: `takeover status` is for a person or a script, and an answer now is worth more
/// than one after every idle client's timeout.
pub const MAX_CLIENTS: usize = 32;
/// A request is one short line (this many bytes with its newline); a longer one is refused,
/// never buffered.
pub const MAX_REQUEST: usize = 4096;
const READ_TIMEOUT: Duration = Duration::from_secs(2);
/// How long the agent may take to answer (a handoff waits for the storage).
const ANSWER_TIMEOUT: Duration = Duration::from_secs(4);
/// A client that does not read its answer does not keep its slot either.
const WRITE_TIMEOUT: Duration = Duration::from_secs(2);
/// After a failed accept: an error such as EMFILE lasts until something is freed, and
/// retrying at once would spin the runtime's thread (at real-time priority).
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Listens on the control socket; each request is handed to the agent's loop by `deliver`
/// (false: the loop has gone).
pub fn listen(deliver: impl Fn(Request) -> bool + Clone + Send + 'static) -> Result<()> {
    listen_at(&socket_path()?, deliver)
}

/// `listen` on the socket at `path` (replaced if it exists).
pub fn listen_at(
    path: &Path,
    deliver: impl Fn(Request) -> bool + Clone + Send + 'static,
) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    // A socket file left by a previous agent (killed) is stale: replace it.
    let _ = std::fs::remove_file(path);
    let listener =
        UnixListener::bind(path).with_context(|| format!("binding {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    tokio::spawn(serve(listener, deliver));
    Ok(())
}

/// The accept loop: it never ends, whatever accept says (it backs off and tries again).
async fn serve(listener: UnixListener, deliver: impl Fn(Request) -> bool + Clone + Send + 'static) {
    let slots = Arc::new(Semaphore::new(MAX_CLIENTS));
    let reports = Arc::new(Mutex::new(Reports::default()));
    loop {
        match listener.accept().await {
            Ok((stream, _)) => match slots.clone().try_acquire_owned() {
                Ok(slot) => {
                    let (deliver, reports) = (deliver.clone(), reports.clone());
                    tokio::spawn(async move {
                        answer(stream, deliver, &reports).await;
                        drop(slot);
                    });
                }
                Err(_) => {
                    refuse_busy(stream);
                    note(
                        &reports,
                        format!("{MAX_CLIENTS} clients at once: one more refused"),
                    );
                }
            },
            Err(e) => {
                note(&reports, format!("accept failed: {e}; retrying"));
                tokio::time::sleep(ACCEPT_BACKOFF).await;
            }
        }
    }
}

/// Answers a client beyond `MAX_CLIENTS` without a task or a wait: one non-blocking write
/// into its empty socket buffer, then close.
fn refuse_busy(stream: UnixStream) {
    use std::io::Write;
    let answer = json!({"error": format!("busy: {MAX_CLIENTS} clients at once; try again")});
    if let Ok(mut s) = stream.into_std() {
        let _ = s.write(format!("{answer}\n").as_bytes());
    }
}

/// Reads one client's request, has the agent's loop answer it, writes the answer.
async fn answer(stream: UnixStream, deliver: impl Fn(Request) -> bool, reports: &Mutex<Reports>) {
    let (r, mut w) = stream.into_split();
    let answer = match tokio::time::timeout(READ_TIMEOUT, read_request(r)).await {
        Ok(Ok(command)) => {
            let (reply, rx) = oneshot::channel();
            if !deliver(Request { command, reply }) {
                return;
            }
            // The storage answers handoff requests: a hung one must not hold the slot.
            match tokio::time::timeout(ANSWER_TIMEOUT, rx).await {
                Ok(answer) => answer.unwrap_or_else(|_| json!({"error": "agent stopping"})),
                Err(_) => {
                    json!({"error": format!("no answer within {ANSWER_TIMEOUT:?} (the storage area may hang)")})
                }
            }
        }
        Ok(Err(refused)) => {
            // A client that connects and closes (a probe) is not worth a line.
            if !matches!(refused, Refused::Empty) {
                note(reports, format!("refused a client: {refused}"));
            }
            json!({ "error": refused.to_string() })
        }
        Err(_) => {
            note(reports, "a client sent no request line in time".into());
            json!({"error": format!("no request line within {READ_TIMEOUT:?}")})
        }
    };
    let _ =
        tokio::time::timeout(WRITE_TIMEOUT, w.write_all(format!("{answer}\n").as_bytes())).await;
}

/// Why a request line was not taken.
enum Refused {
    Empty,
    TooLong,
    Unknown,
    Read(std::io::Error),
}

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        match self {
            Refused::Empty => write!(
                f,
                "empty request; send `status`, `switchover ADDR NODE` or a handoff request"
            ),
            Refused::TooLong => write!(f, "request longer than {MAX_REQUEST} bytes"),
            Refused::Unknown => write!(
                f,
                "unknown request; send `status`, `switchover ADDR NODE` or a handoff request"
            ),
            Refused::Read(e) => write!(f, "reading the request: {e}"),
        }
    }
}

/// One request line, read up to `MAX_REQUEST` bytes and no further.
async fn read_request(r: impl AsyncRead + Unpin) -> Result<Command, Refused> {
    let mut line = Vec::new();
    let limit = MAX_REQUEST as u64 + 1;
    BufReader::with_capacity(512, r.take(limit))
        .read_until(b'\n', &mut line)
        .await
        .map_err(Refused::Read)?;
    if line.len() > MAX_REQUEST {
        return Err(Refused::TooLong);
    }
    if line.trim_ascii().is_empty() {
        return Err(Refused::Empty);
    }
    parse_request(&line).ok_or(Refused::Unknown)
}

/// `status`, `switchover ADDR NODE`, or a handoff request (a JSON object).
pub fn parse_request(line: &[u8]) -> Option<Command> {
    let line = std::str::from_utf8(line).ok()?;
    if line.trim_start().starts_with('{') {
        return serde_json::from_str(line).ok().map(Command::Handoff);
    }
    match line.split_whitespace().collect::<Vec<_>>().as_slice() {
        ["status"] => Some(Command::Status),
        ["switchover", addr, to] => Some(Command::Switchover {
            addr: addr.to_string(),
            to: to.to_string(),
        }),
        _ => None,
    }
}

/// What went wrong on the control socket, logged at most once a second (a flood of clients
/// or a lasting EMFILE must not flood the log too), with how much was left unsaid.
#[derive(Default)]
struct Reports {
    last: Option<Instant>,
    unsaid: u64,
}

fn note(reports: &Mutex<Reports>, what: String) {
    let mut r = reports.lock().unwrap_or_else(|e| e.into_inner());
    if r.last.is_some_and(|t| t.elapsed() < Duration::from_secs(1)) {
        r.unsaid += 1;
        return;
    }
    let unsaid = std::mem::take(&mut r.unsaid);
    r.last = Some(Instant::now());
    drop(r);
    let more = if unsaid > 0 {
        format!(" ({unsaid} more report(s) since the last)")
    } else {
        String::new()
    };
    log::warn!("control socket: {what}{more}");
}

/// Why address `a` cannot be moved to node `to` now, if it cannot. The core would take the
/// order and move nothing until `to` is eligible (alive, LAN up, ready), and the operator
/// would read "ordered"; a node outside the address's preference list is never meant to
/// serve it.
pub fn switchover_refusal(core: &Core, a: ResId, to: NodeId) -> Option<String> {
    let cfg = core.config();
    let (ip, name) = (cfg.resources[a].ip, &cfg.nodes[to]);
    let preference = &cfg.resources[a].preference;
    if !preference.contains(&to) {
        let list: Vec<&str> = preference.iter().map(|&n| cfg.nodes[n].as_str()).collect();
        return Some(format!(
            "{name} does not serve {ip}: it is not in its preference list ({})",
            list.join(", ")
        ));
    }
    if core.server(a) == Some(to) {
        return Some(format!("{ip} is already served by {name}"));
    }
    let (alive, lan_up, ready) = if to == cfg.me {
        (true, core.lan_link(), core.is_ready())
    } else {
        (
            core.peer_alive(to),
            core.peer_lan_up(to).unwrap_or(false),
            core.peer_ready(to).unwrap_or(false),
        )
    };
    if !alive {
        return Some(format!("{name} is not alive (not heard on any path)"));
    }
    if !lan_up {
        return Some(format!("{name}'s LAN link is down"));
    }
    if !ready {
        return Some(format!("{name} is not ready yet (starting up)"));
    }
    None
}

/// Asks the agent of the current network namespace for its status.
pub fn query() -> Result<Status> {
    serde_json::from_value(ask("status")?)
        .context("the agent's status is not what this version reads")
}

/// Asks the agent of the current network namespace to move `addr` to node `to`.
pub fn switchover(addr: &str, to: &str) -> Result<Value> {
    ask(&format!("switchover {addr} {to}"))
}

/// Asks the agent of the current network namespace about a handoff record.
pub fn handoff(request: &Handoff) -> Result<Value> {
    ask(&serde_json::to_string(request)?)
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
    // An agent that refuses (busy) answers and closes without reading: its answer is still
    // there to read after a failed write.
    let sent = stream.write_all(format!("{request}\n").as_bytes());
    let mut line = String::new();
    let read = std::io::BufReader::new(stream).read_line(&mut line);
    if line.is_empty() {
        sent.context("sending the request to the agent")?;
        read.context("reading the agent's answer")?;
        bail!("the agent closed the connection without an answer");
    }
    let v: Value = serde_json::from_str(&line).context("the agent's answer is not JSON")?;
    match v.get("error") {
        Some(Value::String(e)) => bail!("the agent says: {e}"),
        Some(e) => bail!("the agent says: {e}"),
        None => Ok(v),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::sim::{self, Sim};

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn after(s: &mut Sim, d: Duration) {
        let t = s.now + d;
        s.run_until(t);
    }

    /// Asked on node `on`: why address `a` cannot go to `to`.
    fn refusal(s: &Sim, on: NodeId, a: ResId, to: NodeId) -> String {
        switchover_refusal(s.nodes[on].core.as_ref().unwrap(), a, to).unwrap_or_default()
    }

    #[test]
    fn a_switchover_is_refused_toward_a_node_that_cannot_take_it() {
        let mut s = Sim::new(2, ms(1), Some(ms(100)), 1);
        assert!(
            refusal(&s, 0, 0, 0).contains("n0 is not ready"),
            "just started"
        );
        after(&mut s, ms(50));
        // Address 0 is n0's: n1 may take it, n0 has it.
        assert_eq!(refusal(&s, 0, 0, 1), "");
        assert_eq!(refusal(&s, 1, 0, 1), "");
        assert!(refusal(&s, 1, 0, 0).contains("already served by n0"));
        s.set_lan(1, false);
        after(&mut s, ms(5));
        assert!(refusal(&s, 0, 0, 1).contains("n1's LAN link is down"));
        assert!(refusal(&s, 1, 0, 1).contains("n1's LAN link is down"));
        s.set_lan(1, true);
        after(&mut s, ms(200));
        assert_eq!(refusal(&s, 0, 0, 1), "");
        s.crash(1);
        after(&mut s, ms(50));
        assert!(refusal(&s, 0, 0, 1).contains("n1 is not alive"));
    }

    #[test]
    fn a_switchover_is_refused_toward_a_node_outside_the_preference_list() {
        let mut cfg = sim::config(3, 0, ms(1), None);
        cfg.resources[0].preference = vec![0, 1];
        cfg.digest = cfg.digest_of();
        let mut s = Sim::with_config(cfg, 1);
        after(&mut s, ms(50));
        assert!(refusal(&s, 0, 0, 2).contains("not in its preference list (n0, n1)"));
        assert_eq!(refusal(&s, 0, 0, 1), "");
    }

    fn read(bytes: &[u8]) -> Result<Command, Refused> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        rt.block_on(read_request(bytes))
    }

    /// The rows of the table whose header starts with `first`, up to the blank line.
    #[test]
    fn a_request_line_is_bounded() {
        assert!(matches!(read(b"status\n"), Ok(Command::Status)));
        let mut long = vec![b' '; MAX_REQUEST - 7];
        long.extend_from_slice(b"status\n");
        assert!(
            matches!(read(&long), Ok(Command::Status)),
            "exactly the bound"
        );
        long.insert(0, b' ');
        assert!(matches!(read(&long), Err(Refused::TooLong)));
        assert!(matches!(read(&vec![b'x'; 1 << 20]), Err(Refused::TooLong)));
        assert!(matches!(read(b""), Err(Refused::Empty)));
        assert!(matches!(read(b"stat us\n"), Err(Refused::Unknown)));
        assert!(matches!(
            read(b"switchover 10.0.0.1 b\n"),
            Ok(Command::Switchover { .. })
        ));
    }
}
