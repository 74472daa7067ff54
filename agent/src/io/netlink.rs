//! Netlink (rtnetlink): the logical addresses on the LAN interface, the interface that holds
//! an address, and link state events (carrier and operational state, pushed by the kernel).
use std::net::IpAddr;

use anyhow::{anyhow, Context, Result};
use futures::{channel::mpsc::UnboundedReceiver, StreamExt, TryStreamExt};
use netlink_packet_route::{
    address::{AddressAttribute, AddressFlags, AddressHeaderFlags},
    link::{LinkFlags, LinkMessage},
    RouteNetlinkMessage,
};
use netlink_sys::{AsyncSocket, SocketAddr};
use rtnetlink::{constants::RTMGRP_LINK, Handle};

/// A link's state as the agent cares about it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LinkEvent {
    pub ifindex: u32,
    /// Administratively up, carrier present, operationally running.
    pub up: bool,
}

fn link_up(msg: &LinkMessage) -> bool {
    let f = msg.header.flags;
    f.contains(LinkFlags::Up) && f.contains(LinkFlags::LowerUp) && f.contains(LinkFlags::Running)
}

pub fn connect() -> Result<Handle> {
    let (connection, handle, _) =
        rtnetlink::new_connection().context("opening a netlink socket")?;
    tokio::spawn(connection);
    Ok(handle)
}

/// Adds `ip/prefix` to interface `ifindex` unless it is there (false: it was); IPv6 without
/// duplicate address detection (every node has the address; DAD would disable it on all but
/// one).
pub async fn ensure_address(handle: &Handle, ifindex: u32, ip: IpAddr, prefix: u8) -> Result<bool> {
    let mut req = handle.address().add(ifindex, ip, prefix);
    if ip.is_ipv6() {
        let msg = req.message_mut();
        msg.header.flags |= AddressHeaderFlags::Nodad;
        msg.attributes
            .push(AddressAttribute::Flags(AddressFlags::Nodad));
    }
    match req.execute().await {
        Ok(()) => Ok(true),
        Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::EEXIST => Ok(false),
        Err(e) => Err(anyhow!(
            "cannot add {ip}/{prefix} to interface {ifindex}: {e}"
        )),
    }
}

/// Removes `ip/prefix` from interface `ifindex` (undoing `ensure_address`).
pub async fn remove_address(handle: &Handle, ifindex: u32, ip: IpAddr, prefix: u8) -> Result<()> {
    let mut addrs = handle
        .address()
        .get()
        .set_link_index_filter(ifindex)
        .set_address_filter(ip)
        .execute();
    while let Some(msg) = addrs.try_next().await? {
        if msg.header.prefix_len == prefix {
            handle
                .address()
                .del(msg)
                .execute()
                .await
                .with_context(|| format!("cannot remove {ip}/{prefix} from interface {ifindex}"))?;
        }
    }
    Ok(())
}

/// The interface that holds address `ip`, if any.
pub async fn ifindex_of_address(handle: &Handle, ip: IpAddr) -> Result<Option<u32>> {
    let mut addrs = handle.address().get().execute();
    while let Some(msg) = addrs.try_next().await? {
        for attr in &msg.attributes {
            if let AddressAttribute::Address(a) | AddressAttribute::Local(a) = attr {
                if *a == ip {
                    return Ok(Some(msg.header.index));
                }
            }
        }
    }
    Ok(None)
}

/// The link-layer address the neighbour table holds for `ip` on `ifindex`, if any.
pub async fn neighbour_mac(handle: &Handle, ifindex: u32, ip: IpAddr) -> Result<Option<[u8; 6]>> {
    use netlink_packet_route::neighbour::{NeighbourAddress, NeighbourAttribute};
    let mut entries = handle.neighbours().get().execute();
    while let Some(msg) = entries.try_next().await? {
        if msg.header.ifindex != ifindex {
            continue;
        }
        let dst = msg.attributes.iter().find_map(|a| match a {
            NeighbourAttribute::Destination(NeighbourAddress::Inet(v4)) => Some(IpAddr::V4(*v4)),
            NeighbourAttribute::Destination(NeighbourAddress::Inet6(v6)) => Some(IpAddr::V6(*v6)),
            _ => None,
        });
        if dst != Some(ip) {
            continue;
        }
        for a in &msg.attributes {
            if let NeighbourAttribute::LinkLayerAddress(mac) = a {
                if let Ok(mac) = <[u8; 6]>::try_from(mac.as_slice()) {
                    return Ok(Some(mac));
                }
            }
        }
    }
    Ok(None)
}

/// Whether interface `ifindex` is up now.
pub async fn is_up(handle: &Handle, ifindex: u32) -> Result<bool> {
    let mut links = handle.link().get().match_index(ifindex).execute();
    let msg = links
        .try_next()
        .await?
        .with_context(|| format!("no interface {ifindex}"))?;
    Ok(link_up(&msg))
}

/// Link events as the kernel sends them (RTMGRP_LINK): no polling.
pub fn watch_links() -> Result<UnboundedReceiver<LinkEvent>> {
    let (mut connection, _, mut messages) =
        rtnetlink::new_connection().context("opening a netlink socket")?;
    connection
        .socket_mut()
        .socket_mut()
        .bind(&SocketAddr::new(0, RTMGRP_LINK))
        .context("subscribing to link events")?;
    tokio::spawn(connection);
    let (tx, rx) = futures::channel::mpsc::unbounded();
    tokio::spawn(async move {
        while let Some((msg, _)) = messages.next().await {
            if let netlink_packet_core::NetlinkPayload::InnerMessage(m) = msg.payload {
                let ev = match m {
                    RouteNetlinkMessage::NewLink(l) => LinkEvent {
                        ifindex: l.header.index,
                        up: link_up(&l),
                    },
                    RouteNetlinkMessage::DelLink(l) => LinkEvent {
                        ifindex: l.header.index,
                        up: false,
                    },
                    _ => continue,
                };
                if tx.unbounded_send(ev).is_err() {
                    break;
                }
            }
        }
    });
    Ok(rx)
}
