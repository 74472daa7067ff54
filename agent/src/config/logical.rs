//! What can be a logical address: one predicate for the config and the command line, so
//! `takeover run` never gates an address that `takeover gate remove` refuses.
use std::{
    fmt,
    net::{IpAddr, Ipv4Addr},
};

/// Why an address can never be a logical address, whatever its prefix.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NotLogical {
    Unspecified,
    Loopback,
    Multicast,
    Broadcast,
    LinkLocal,
    /// `::ffff:a.b.c.d`: the gate would key it as IPv6 and never match the IPv4 traffic.
    V4Mapped,
}

impl fmt::Display for NotLogical {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            NotLogical::Unspecified => "the unspecified address",
            NotLogical::Loopback => "a loopback address",
            NotLogical::Multicast => "a multicast address",
            NotLogical::Broadcast => "the broadcast address",
            NotLogical::LinkLocal => {
                "link-local (169.254.0.0/16, fe80::/10: every link has its own)"
            }
            NotLogical::V4Mapped => "an IPv4-mapped IPv6 address (write the IPv4 address)",
        })
    }
}

/// Ok for a unicast, routable address a host can serve on its LAN.
pub fn check_logical(ip: IpAddr) -> Result<(), NotLogical> {
    let refused = match ip {
        _ if ip.is_unspecified() => NotLogical::Unspecified,
        _ if ip.is_loopback() => NotLogical::Loopback,
        _ if ip.is_multicast() => NotLogical::Multicast,
        IpAddr::V4(v4) if v4.is_broadcast() => NotLogical::Broadcast,
        IpAddr::V4(v4) if v4.is_link_local() => NotLogical::LinkLocal,
        IpAddr::V6(v6) if v6.is_unicast_link_local() => NotLogical::LinkLocal,
        IpAddr::V6(v6) if v6.to_ipv4_mapped().is_some() => NotLogical::V4Mapped,
        _ => return Ok(()),
    };
    Err(refused)
}

/// The broadcast address of `ip`'s subnet, for IPv4 prefixes that have one (/30 and wider;
/// /31 and /32 have no broadcast, RFC 3021).
pub fn subnet_broadcast(ip: Ipv4Addr, prefix: u8) -> Option<Ipv4Addr> {
    if prefix > 30 {
        return None;
    }
    let host_bits = u32::MAX >> prefix;
    Some(Ipv4Addr::from(u32::from(ip) | host_bits))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_what_can_never_be_served() {
        for (bad, why) in [
            ("0.0.0.0", NotLogical::Unspecified),
            ("::", NotLogical::Unspecified),
            ("127.0.0.1", NotLogical::Loopback),
            ("::1", NotLogical::Loopback),
            ("224.0.0.1", NotLogical::Multicast),
            ("ff02::1", NotLogical::Multicast),
            ("255.255.255.255", NotLogical::Broadcast),
            ("169.254.1.1", NotLogical::LinkLocal),
            ("fe80::1", NotLogical::LinkLocal),
            ("febf::1", NotLogical::LinkLocal),
            ("::ffff:10.0.0.1", NotLogical::V4Mapped),
        ] {
            assert_eq!(check_logical(bad.parse().unwrap()), Err(why), "{bad}");
        }
        for good in [
            "10.0.0.1",
            "192.0.2.255",
            "fd00::1",
            "2001:db8::1",
            "fec0::1",
        ] {
            assert_eq!(check_logical(good.parse().unwrap()), Ok(()), "{good}");
        }
    }

    #[test]
    fn subnet_broadcast_only_where_the_prefix_has_one() {
        let ip = "10.77.0.100".parse().unwrap();
        assert_eq!(
            subnet_broadcast(ip, 24),
            Some("10.77.0.255".parse().unwrap())
        );
        assert_eq!(
            subnet_broadcast(ip, 30),
            Some("10.77.0.103".parse().unwrap())
        );
        assert_eq!(subnet_broadcast(ip, 31), None);
        assert_eq!(subnet_broadcast(ip, 32), None);
    }
}
