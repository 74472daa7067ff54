//! Native health checks: run inside the agent on its runtime's threads (never on the
//! heartbeat loop), without a process per check. Each ends within its timeout with a pass or
//! the reason it failed, for the status table.
//!
//! HTTP and DNS are spoken here in the few bytes a check needs (one GET, one query; bounded
//! reads) rather than through a client library: the agent is locked in memory and on a
//! real-time loop, and a check needs neither redirects, TLS nor name compression.
use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    time::Duration,
};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpStream, UdpSocket},
};

use crate::config::service::{CheckKind, DnsRecord, Proto};

/// The most of a reply a check reads.
const MAX_REPLY: usize = 64 * 1024;

/// Runs check `kind` against the instance at `ip` (a logical address: local on every node,
/// so this reaches this node's own instance). `pid` is the instance's process, if known.
pub async fn run(
    kind: &CheckKind,
    ip: IpAddr,
    timeout: Duration,
    pid: Option<u32>,
) -> Result<(), String> {
    match tokio::time::timeout(timeout, attempt(kind, ip, pid)).await {
        Ok(r) => r,
        Err(_) => Err(format!("no answer within {timeout:?}")),
    }
}

async fn attempt(kind: &CheckKind, ip: IpAddr, pid: Option<u32>) -> Result<(), String> {
    match kind {
        CheckKind::Process => match pid {
            Some(pid) if process_alive(pid) => Ok(()),
            Some(pid) => Err(format!("process {pid} is gone")),
            None => Err("no process".into()),
        },
        CheckKind::Tcp { port } => connect(ip, *port).await.map(drop),
        CheckKind::Udp { port, send, expect } => {
            let reply = udp_exchange(ip, *port, send).await?;
            match expect {
                Some(e) if !contains(&reply, e) => Err(format!(
                    "the reply ({} bytes) does not contain {:?}",
                    reply.len(),
                    String::from_utf8_lossy(e)
                )),
                _ => Ok(()),
            }
        }
        CheckKind::Http {
            port,
            path,
            host,
            status,
            body,
        } => http(ip, *port, path, host.as_deref(), *status, body.as_deref()).await,
        CheckKind::Dns {
            port,
            proto,
            name,
            record,
        } => dns(ip, *port, *proto, name, *record).await,
        CheckKind::Exec { command } => exec(command).await,
        CheckKind::OcfMonitor => Err("an OCF monitor runs through its agent".into()),
    }
}

/// Alive and not a zombie (a zombie's service is gone though its pid stays until reaped).
pub fn process_alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the command name's closing parenthesis.
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.trim_start().chars().next())
            .is_some_and(|s| s != 'Z' && s != 'X'),
        Err(_) => false,
    }
}

async fn connect(ip: IpAddr, port: u16) -> Result<TcpStream, String> {
    TcpStream::connect(SocketAddr::new(ip, port))
        .await
        .map_err(|e| format!("connect to {}: {e}", SocketAddr::new(ip, port)))
}

fn unspecified(ip: IpAddr) -> SocketAddr {
    match ip {
        IpAddr::V4(_) => SocketAddr::new(Ipv4Addr::UNSPECIFIED.into(), 0),
        IpAddr::V6(_) => SocketAddr::new(Ipv6Addr::UNSPECIFIED.into(), 0),
    }
}

async fn udp_exchange(ip: IpAddr, port: u16, send: &[u8]) -> Result<Vec<u8>, String> {
    let to = SocketAddr::new(ip, port);
    let sock = UdpSocket::bind(unspecified(ip))
        .await
        .map_err(|e| format!("udp socket: {e}"))?;
    sock.connect(to)
        .await
        .map_err(|e| format!("udp to {to}: {e}"))?;
    sock.send(send)
        .await
        .map_err(|e| format!("send to {to}: {e}"))?;
    let mut buf = vec![0u8; MAX_REPLY];
    // A refused port shows as an error here (ICMP port unreachable on a connected socket).
    let n = sock
        .recv(&mut buf)
        .await
        .map_err(|e| format!("reply from {to}: {e}"))?;
    buf.truncate(n);
    Ok(buf)
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    needle.is_empty() || hay.windows(needle.len()).any(|w| w == needle)
}

async fn http(
    ip: IpAddr,
    port: u16,
    path: &str,
    host: Option<&str>,
    want: u16,
    body: Option<&str>,
) -> Result<(), String> {
    let mut s = connect(ip, port).await?;
    let host = host.map_or_else(
        || match ip {
            IpAddr::V4(v4) => format!("{v4}:{port}"),
            IpAddr::V6(v6) => format!("[{v6}]:{port}"),
        },
        str::to_string,
    );
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: takeover-check\r\nAccept: */*\r\nConnection: close\r\n\r\n"
    );
    s.write_all(req.as_bytes())
        .await
        .map_err(|e| format!("sending the request: {e}"))?;
    let reply = read_bounded(&mut s, body.is_some()).await?;
    let status = parse_status(&reply).ok_or_else(|| {
        format!(
            "not an HTTP reply: {:?}",
            String::from_utf8_lossy(&reply[..reply.len().min(40)])
        )
    })?;
    if status != want {
        return Err(format!("HTTP status {status}, not {want}"));
    }
    if let Some(b) = body {
        let start = find(&reply, b"\r\n\r\n").map_or(reply.len(), |i| i + 4);
        if !contains(&reply[start..], b.as_bytes()) {
            return Err(format!("the body does not contain {b:?}"));
        }
    }
    Ok(())
}

/// Reads until the peer closes (the request said `Connection: close`), or, when only the
/// status matters, until the status line is in; at most `MAX_REPLY` bytes.
async fn read_bounded(s: &mut TcpStream, whole: bool) -> Result<Vec<u8>, String> {
    let mut reply = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = s
            .read(&mut buf)
            .await
            .map_err(|e| format!("reading the reply: {e}"))?;
        if n == 0 {
            return Ok(reply);
        }
        reply.extend_from_slice(&buf[..n]);
        if reply.len() >= MAX_REPLY || (!whole && find(&reply, b"\r\n").is_some()) {
            return Ok(reply);
        }
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// `HTTP/1.1 204 No Content` -> 204.
fn parse_status(reply: &[u8]) -> Option<u16> {
    let line = &reply[..find(reply, b"\r\n")?];
    let line = std::str::from_utf8(line).ok()?;
    let mut words = line.split(' ');
    words.next().filter(|v| v.starts_with("HTTP/"))?;
    words
        .next()?
        .parse()
        .ok()
        .filter(|s| (100..=599).contains(s))
}

/// A DNS query for `name`: answered, without an error code, with at least one record.
async fn dns(
    ip: IpAddr,
    port: u16,
    proto: Proto,
    name: &str,
    record: DnsRecord,
) -> Result<(), String> {
    let id = query_id();
    let query = dns_query(id, name, record.number());
    let reply = match proto {
        Proto::Udp => udp_exchange(ip, port, &query).await?,
        Proto::Tcp => {
            let mut s = connect(ip, port).await?;
            let mut framed = (query.len() as u16).to_be_bytes().to_vec();
            framed.extend_from_slice(&query);
            s.write_all(&framed)
                .await
                .map_err(|e| format!("sending the query: {e}"))?;
            let mut len = [0u8; 2];
            s.read_exact(&mut len)
                .await
                .map_err(|e| format!("reading the reply: {e}"))?;
            let mut reply = vec![0u8; u16::from_be_bytes(len) as usize];
            s.read_exact(&mut reply)
                .await
                .map_err(|e| format!("reading the reply: {e}"))?;
            reply
        }
    };
    dns_verdict(id, &reply)
}

fn query_id() -> u16 {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    (t.subsec_nanos() ^ std::process::id()) as u16
}

/// Header (id, RD, one question) and the question (`name`, `qtype`, class IN).
pub(crate) fn dns_query(id: u16, name: &str, qtype: u16) -> Vec<u8> {
    let mut q = Vec::with_capacity(32 + name.len());
    q.extend_from_slice(&id.to_be_bytes());
    q.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
    for label in name.trim_end_matches('.').split('.') {
        q.push(label.len() as u8);
        q.extend_from_slice(label.as_bytes());
    }
    q.push(0);
    q.extend_from_slice(&qtype.to_be_bytes());
    q.extend_from_slice(&1u16.to_be_bytes());
    q
}

pub(crate) fn dns_verdict(id: u16, reply: &[u8]) -> Result<(), String> {
    if reply.len() < 12 {
        return Err(format!("a DNS reply of {} bytes", reply.len()));
    }
    if u16::from_be_bytes([reply[0], reply[1]]) != id || reply[2] & 0x80 == 0 {
        return Err("not the reply to this query".into());
    }
    const RCODES: [&str; 6] = [
        "NOERROR", "FORMERR", "SERVFAIL", "NXDOMAIN", "NOTIMP", "REFUSED",
    ];
    let rcode = reply[3] & 0x0f;
    if rcode != 0 {
        return Err(format!(
            "DNS error {}",
            RCODES
                .get(rcode as usize)
                .map_or(rcode.to_string(), |r| r.to_string())
        ));
    }
    if u16::from_be_bytes([reply[6], reply[7]]) == 0 {
        return Err("the answer is empty".into());
    }
    Ok(())
}

async fn exec(command: &[String]) -> Result<(), String> {
    let (program, args) = command.split_first().ok_or("no command")?;
    let status = tokio::process::Command::new(program)
        .args(args)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        // The check's timeout drops this future: the command goes with it.
        .kill_on_drop(true)
        .status()
        .await
        .map_err(|e| format!("running {program}: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("{program} exited with {status}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    const LOCAL: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);
    const T: Duration = Duration::from_secs(2);

    fn rt() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    }

    /// A TCP server on localhost answering each connection with `reply`.
    async fn serve_tcp(reply: &'static [u8]) -> u16 {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                let mut buf = [0u8; 1024];
                let _ = s.read(&mut buf).await;
                let _ = s.write_all(reply).await;
            }
        });
        port
    }

    /// A port nothing listens on (bound, then closed).
    fn closed_port() -> u16 {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    }

    #[test]
    fn tcp_passes_on_a_listening_port_and_says_why_on_a_closed_one() {
        rt().block_on(async {
            let port = serve_tcp(b"").await;
            assert_eq!(run(&CheckKind::Tcp { port }, LOCAL, T, None).await, Ok(()));
            let err = run(
                &CheckKind::Tcp {
                    port: closed_port(),
                },
                LOCAL,
                T,
                None,
            )
            .await
            .unwrap_err();
            assert!(err.contains("refused"), "{err}");
        });
    }

    #[test]
    fn http_checks_status_and_body() {
        rt().block_on(async {
            let port = serve_tcp(b"HTTP/1.1 200 OK\r\nContent-Length: 7\r\n\r\nall ok\n").await;
            let check = |status, body: Option<&str>| CheckKind::Http {
                port,
                path: "/health".into(),
                host: None,
                status,
                body: body.map(str::to_string),
            };
            assert_eq!(run(&check(200, None), LOCAL, T, None).await, Ok(()));
            assert_eq!(run(&check(200, Some("ok")), LOCAL, T, None).await, Ok(()));
            let e = run(&check(204, None), LOCAL, T, None).await.unwrap_err();
            assert_eq!(e, "HTTP status 200, not 204");
            let e = run(&check(200, Some("bad")), LOCAL, T, None)
                .await
                .unwrap_err();
            assert!(e.contains("does not contain \"bad\""), "{e}");
            let garbage = serve_tcp(b"SSH-2.0-OpenSSH\r\n").await;
            let e = run(
                &CheckKind::Http {
                    port: garbage,
                    path: "/".into(),
                    host: None,
                    status: 200,
                    body: None,
                },
                LOCAL,
                T,
                None,
            )
            .await
            .unwrap_err();
            assert!(e.starts_with("not an HTTP reply"), "{e}");
        });
    }

    #[test]
    fn a_silent_server_fails_within_the_timeout() {
        rt().block_on(async {
            // Accepts, reads, never answers.
            let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let port = l.local_addr().unwrap().port();
            tokio::spawn(async move {
                let mut held = vec![];
                while let Ok((s, _)) = l.accept().await {
                    held.push(s);
                }
            });
            let check = CheckKind::Http {
                port,
                path: "/".into(),
                host: None,
                status: 200,
                body: None,
            };
            let e = run(&check, LOCAL, Duration::from_millis(50), None)
                .await
                .unwrap_err();
            assert_eq!(e, "no answer within 50ms");
        });
    }

    #[test]
    fn udp_expects_a_reply_containing_what_is_configured() {
        rt().block_on(async {
            let s = UdpSocket::bind("127.0.0.1:0").await.unwrap();
            let port = s.local_addr().unwrap().port();
            tokio::spawn(async move {
                let mut buf = [0u8; 100];
                while let Ok((n, from)) = s.recv_from(&mut buf).await {
                    let mut r = b"pong:".to_vec();
                    r.extend_from_slice(&buf[..n]);
                    let _ = s.send_to(&r, from).await;
                }
            });
            let check = |expect: &str| CheckKind::Udp {
                port,
                send: b"ping".to_vec(),
                expect: Some(expect.as_bytes().to_vec()),
            };
            assert_eq!(run(&check("pong:ping"), LOCAL, T, None).await, Ok(()));
            assert!(run(&check("nope"), LOCAL, T, None).await.is_err());
            // Nothing on the port: the kernel's port unreachable, at once.
            let unused = std::net::UdpSocket::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port();
            let e = run(
                &CheckKind::Udp {
                    port: unused,
                    send: b"x".to_vec(),
                    expect: None,
                },
                LOCAL,
                T,
                None,
            )
            .await
            .unwrap_err();
            assert!(e.contains("refused"), "{e}");
        });
    }

    #[test]
    fn dns_queries_are_well_formed_and_replies_judged() {
        let q = dns_query(0x1234, "www.example.lan", 1);
        assert_eq!(&q[..4], &[0x12, 0x34, 0x01, 0x00]);
        assert_eq!(&q[12..17], b"\x03www\x07");
        assert_eq!(&q[q.len() - 4..], &[0, 1, 0, 1]);
        // A reply: the header with QR set, NOERROR, one answer.
        let mut reply = q.clone();
        reply[2] |= 0x80;
        reply[7] = 1;
        assert_eq!(dns_verdict(0x1234, &reply), Ok(()));
        assert_eq!(
            dns_verdict(0x1235, &reply),
            Err("not the reply to this query".into())
        );
        let mut nx = reply.clone();
        nx[3] = 3;
        assert_eq!(dns_verdict(0x1234, &nx), Err("DNS error NXDOMAIN".into()));
        let mut empty = reply.clone();
        empty[7] = 0;
        assert_eq!(
            dns_verdict(0x1234, &empty),
            Err("the answer is empty".into())
        );
        assert!(dns_verdict(0x1234, &reply[..5]).is_err());
    }

    #[test]
    fn exec_passes_on_exit_zero_and_is_killed_at_the_timeout() {
        rt().block_on(async {
            let ok = CheckKind::Exec {
                command: vec!["true".into()],
            };
            assert_eq!(run(&ok, LOCAL, T, None).await, Ok(()));
            let bad = CheckKind::Exec {
                command: vec!["false".into()],
            };
            assert!(run(&bad, LOCAL, T, None)
                .await
                .unwrap_err()
                .contains("exit status: 1"));
            let slow = CheckKind::Exec {
                command: vec!["sleep".into(), "5".into()],
            };
            let started = std::time::Instant::now();
            let e = run(&slow, LOCAL, Duration::from_millis(50), None)
                .await
                .unwrap_err();
            assert_eq!(e, "no answer within 50ms");
            assert!(started.elapsed() < Duration::from_secs(4), "not waited out");
        });
    }

    #[test]
    fn a_process_check_sees_exit_and_zombies() {
        let mut child = std::process::Command::new("sleep")
            .arg("10")
            .spawn()
            .unwrap();
        let pid = child.id();
        assert!(process_alive(pid));
        child.kill().unwrap();
        // Killed but not reaped: a zombie, not alive.
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while process_alive(pid) {
            assert!(std::time::Instant::now() < deadline, "still alive");
            std::thread::sleep(Duration::from_millis(1));
        }
        child.wait().unwrap();
        assert!(!process_alive(pid));
    }
}
