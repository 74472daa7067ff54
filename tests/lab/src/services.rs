//! Real services from Debian for the agents to run: nginx (HTTP on TCP) and dnsmasq (DNS on
//! UDP), each configured to say which host answered, with every file of theirs in a
//! directory of the test's; and the clients that ask them.
use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpStream, UdpSocket},
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Context, Result};

use crate::Netns;

/// An nginx configuration answering `GET /` on `addr:port` with `who`, its pid file, logs
/// and temporary files under `dir` (created). Returns the configuration file.
pub fn nginx_conf(dir: &Path, addr: &str, port: u16, who: &str) -> Result<PathBuf> {
    std::fs::create_dir_all(dir)?;
    let d = dir.display();
    let conf = dir.join("nginx.conf");
    std::fs::write(
        &conf,
        format!(
            r#"daemon off;
master_process on;
worker_processes 1;
user root;
pid {d}/nginx.pid;
error_log {d}/error.log;
events {{ worker_connections 256; }}
http {{
    access_log off;
    client_body_temp_path {d}/body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    server {{
        listen {addr}:{port};
        location / {{ return 200 "{who}\n"; }}
    }}
}}
"#
        ),
    )?;
    Ok(conf)
}

/// [`nginx_conf`] for a manager that expects nginx to daemonize itself (an OCF agent).
pub fn nginx_daemon_conf(dir: &Path, addr: &str, port: u16, who: &str) -> Result<PathBuf> {
    let conf = nginx_conf(dir, addr, port, who)?;
    let text = std::fs::read_to_string(&conf)?;
    std::fs::write(&conf, text.replace("daemon off;", "daemon on;"))?;
    Ok(conf)
}

/// A dnsmasq configuration answering on `addr:53` for `who.test` (TXT `who`), nothing else,
/// in the foreground. Returns the configuration file.
pub fn dnsmasq_conf(dir: &Path, addr: &str, who: &str) -> Result<PathBuf> {
    std::fs::create_dir_all(dir)?;
    let conf = dir.join("dnsmasq.conf");
    std::fs::write(
        &conf,
        format!(
            "keep-in-foreground\nuser=root\nport=53\nlisten-address={addr}\nbind-interfaces\n\
             no-resolv\nno-hosts\nno-poll\npid-file={}/dnsmasq.pid\ntxt-record=who.test,{who}\n",
            dir.display()
        ),
    )?;
    Ok(conf)
}

/// `GET /` from `ns` to `addr:port`: the body, or `None` on a refusal, a reset or no
/// answer within `timeout` (one try, a fresh connection each time).
pub fn http_get(ns: &Netns, addr: &str, port: u16, timeout: Duration) -> Result<Option<String>> {
    let target: SocketAddr = format!("{addr}:{port}").parse()?;
    ns.within(move || {
        let Ok(mut s) = TcpStream::connect_timeout(&target, timeout) else {
            return Ok(None);
        };
        s.set_read_timeout(Some(timeout))?;
        s.set_write_timeout(Some(timeout))?;
        if s.write_all(b"GET / HTTP/1.0\r\nHost: test\r\n\r\n")
            .is_err()
        {
            return Ok(None);
        }
        let mut reply = Vec::new();
        if s.read_to_end(&mut reply).is_err() {
            return Ok(None);
        }
        let text = String::from_utf8_lossy(&reply);
        Ok(text
            .split_once("\r\n\r\n")
            .filter(|(head, _)| {
                head.starts_with("HTTP/1.1 200") || head.starts_with("HTTP/1.0 200")
            })
            .map(|(_, body)| body.trim().to_string()))
    })
}

/// A TXT query for `who.test` from `ns` to `addr:53`: the text, or `None` without an answer
/// within `timeout`.
pub fn dns_who(ns: &Netns, addr: &str, timeout: Duration) -> Result<Option<String>> {
    let target: SocketAddr = format!("{addr}:53").parse()?;
    ns.within(move || {
        let sock = UdpSocket::bind("0.0.0.0:0").context("binding a DNS client")?;
        sock.set_read_timeout(Some(timeout))?;
        let id: u16 = rand_id();
        let mut q = Vec::new();
        q.extend_from_slice(&id.to_be_bytes());
        q.extend_from_slice(&[1, 0, 0, 1, 0, 0, 0, 0, 0, 0]);
        for label in ["who", "test"] {
            q.push(label.len() as u8);
            q.extend_from_slice(label.as_bytes());
        }
        q.extend_from_slice(&[0, 0, 16, 0, 1]);
        sock.send_to(&q, target)?;
        let mut buf = [0u8; 512];
        let Ok((n, _)) = sock.recv_from(&mut buf) else {
            return Ok(None);
        };
        Ok(txt_answer(&buf[..n], id))
    })
}

/// The first TXT string of the answer to query `id` (one question), if there is one.
fn txt_answer(r: &[u8], id: u16) -> Option<String> {
    if r.len() < 12 || r[..2] != id.to_be_bytes() || u16::from_be_bytes([r[6], r[7]]) == 0 {
        return None;
    }
    // Skips a name: labels up to a zero, or a compression pointer.
    let skip_name = |mut at: usize| -> Option<usize> {
        loop {
            let len = *r.get(at)? as usize;
            if len == 0 {
                return Some(at + 1);
            }
            if len & 0xc0 == 0xc0 {
                return Some(at + 2);
            }
            at += 1 + len;
        }
    };
    let answer = skip_name(12)? + 4;
    let rdata = skip_name(answer)? + 10;
    let len = *r.get(rdata)? as usize;
    let text = r.get(rdata + 1..rdata + 1 + len)?;
    Some(String::from_utf8_lossy(text).to_string())
}

fn rand_id() -> u16 {
    (std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .subsec_nanos()
        & 0xffff) as u16
}
