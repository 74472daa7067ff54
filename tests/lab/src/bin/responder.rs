//! A UDP service for the demo and the benchmarks to run under the agents, as a process of
//! its own (so it can be killed): answers every datagram on `BIND` with `<TAG> <request>`.
//!
//! Usage: responder BIND TAG
use std::net::UdpSocket;

use anyhow::{Context, Result};

fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let (bind, tag) = args
        .next()
        .zip(args.next())
        .context("usage: responder BIND TAG")?;
    let sock = UdpSocket::bind(&bind).with_context(|| format!("binding {bind}"))?;
    let mut buf = [0u8; 2048];
    loop {
        let (n, from) = sock.recv_from(&mut buf)?;
        let mut reply = Vec::with_capacity(tag.len() + 1 + n);
        reply.extend_from_slice(tag.as_bytes());
        reply.push(b' ');
        reply.extend_from_slice(&buf[..n]);
        let _ = sock.send_to(&reply, from);
    }
}
