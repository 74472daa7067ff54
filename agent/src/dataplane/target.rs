//! What a gate entry is about: a logical address, optionally narrowed to one service.
use std::{fmt, net::IpAddr, str::FromStr};

use anyhow::{bail, Context};
use takeover_common::{GateKey, FAMILY_V4, FAMILY_V6, PROTO_ANY, PROTO_TCP, PROTO_UDP};

/// Transport protocol and port of a per-service entry (`tcp/80`, `udp/53`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Service {
    pub proto: Proto,
    pub port: u16,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Proto {
    Tcp,
    Udp,
}

impl Proto {
    pub fn number(self) -> u8 {
        match self {
            Proto::Tcp => PROTO_TCP,
            Proto::Udp => PROTO_UDP,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
        }
    }
}

impl FromStr for Service {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> anyhow::Result<Self> {
        let Some((proto, port)) = s.split_once('/') else {
            bail!("invalid service {s:?}: expected PROTO/PORT, such as tcp/80 or udp/53");
        };
        let proto = match proto.to_ascii_lowercase().as_str() {
            "tcp" => Proto::Tcp,
            "udp" => Proto::Udp,
            other => bail!("invalid service {s:?}: protocol {other:?} is not tcp or udp"),
        };
        let port: u16 = port
            .parse()
            .ok()
            .filter(|p| *p != 0)
            .with_context(|| format!("invalid service {s:?}: port must be 1-65535"))?;
        Ok(Self { proto, port })
    }
}

impl fmt::Display for Service {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.proto.name(), self.port)
    }
}

/// A gate entry's subject.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Target {
    pub addr: IpAddr,
    pub service: Option<Service>,
}

impl Target {
    pub fn new(addr: IpAddr, service: Option<Service>) -> Self {
        Self { addr, service }
    }

    /// Parses an address as the CLI takes it, refusing what can never be a logical address.
    pub fn parse_addr(s: &str) -> anyhow::Result<IpAddr> {
        let addr: IpAddr = s
            .parse()
            .with_context(|| format!("invalid address {s:?}: expected an IPv4 or IPv6 address"))?;
        // The config's predicate: what `run` gates, the CLI can name (and remove).
        if let Err(why) = crate::config::check_logical(addr) {
            bail!(
                "invalid address {s:?}: a logical address must be a unicast, non-loopback address, not {why}"
            );
        }
        Ok(addr)
    }

    pub fn key(&self) -> GateKey {
        let key = match self.addr {
            IpAddr::V4(a) => GateKey::v4(a.octets()),
            IpAddr::V6(a) => GateKey::v6(a.octets()),
        };
        match self.service {
            Some(s) => key.service(s.proto.number(), s.port),
            None => key,
        }
    }

    /// The inverse of [`Target::key`]; `None` for a key no `takeover` writes.
    pub fn from_key(key: &GateKey) -> Option<Self> {
        let addr = match key.family {
            FAMILY_V4 => {
                let mut a = [0u8; 4];
                a.copy_from_slice(&key.addr[..4]);
                IpAddr::from(a)
            }
            FAMILY_V6 => IpAddr::from(key.addr),
            _ => return None,
        };
        let service = match key.proto {
            PROTO_ANY if key.port == 0 => None,
            PROTO_TCP if key.port != 0 => Some(Service {
                proto: Proto::Tcp,
                port: key.port,
            }),
            PROTO_UDP if key.port != 0 => Some(Service {
                proto: Proto::Udp,
                port: key.port,
            }),
            _ => return None,
        };
        Some(Self { addr, service })
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.service {
            Some(s) => write!(f, "{} {}", self.addr, s),
            None => write!(f, "{}", self.addr),
        }
    }
}

/// Parses `aa:bb:cc:dd:ee:ff` (also with `-`), refusing multicast and all-zero addresses.
pub fn parse_mac(s: &str) -> anyhow::Result<[u8; 6]> {
    let parts: Vec<&str> = s.split([':', '-']).collect();
    let bad = || {
        anyhow::anyhow!(
            "invalid MAC address {s:?}: expected six hex bytes such as 02:00:00:00:00:01"
        )
    };
    if parts.len() != 6 {
        return Err(bad());
    }
    let mut mac = [0u8; 6];
    for (m, p) in mac.iter_mut().zip(parts) {
        if p.is_empty() || p.len() > 2 {
            return Err(bad());
        }
        *m = u8::from_str_radix(p, 16).map_err(|_| bad())?;
    }
    if mac == [0; 6] || mac[0] & 1 == 1 {
        bail!("invalid MAC address {s:?}: the next hop must be a unicast address");
    }
    Ok(mac)
}

pub fn format_mac(mac: &[u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn service_parses_and_rejects() {
        assert_eq!(
            "tcp/80".parse::<Service>().unwrap(),
            Service {
                proto: Proto::Tcp,
                port: 80
            }
        );
        assert_eq!(
            "UDP/53".parse::<Service>().unwrap(),
            Service {
                proto: Proto::Udp,
                port: 53
            }
        );
        for bad in [
            "tcp",
            "sctp/80",
            "tcp/0",
            "tcp/65536",
            "tcp/-1",
            "/80",
            "tcp/",
        ] {
            assert!(bad.parse::<Service>().is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn target_key_round_trips() {
        for (addr, svc) in [
            ("192.0.2.1", None),
            ("2001:db8::1", Some("udp/53")),
            ("10.0.0.1", Some("tcp/443")),
        ] {
            let t = Target::new(
                Target::parse_addr(addr).unwrap(),
                svc.map(|s| s.parse().unwrap()),
            );
            assert_eq!(Target::from_key(&t.key()), Some(t));
        }
    }

    #[test]
    fn addresses_that_cannot_be_logical_are_refused() {
        for bad in [
            "0.0.0.0",
            "::",
            "127.0.0.1",
            "::1",
            "224.0.0.1",
            "ff02::1",
            "255.255.255.255",
            "169.254.0.1",
            "fe80::1",
            "1.2.3",
            "x",
        ] {
            assert!(Target::parse_addr(bad).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn mac_parses_and_rejects() {
        assert_eq!(parse_mac("02:00:00:00:00:0a").unwrap(), [2, 0, 0, 0, 0, 10]);
        assert_eq!(
            parse_mac("02-AA-00-00-00-0a").unwrap(),
            [2, 0xaa, 0, 0, 0, 10]
        );
        for bad in [
            "02:00:00:00:00",
            "02:00:00:00:00:00:01",
            "zz:00:00:00:00:01",
            "00:00:00:00:00:00",
            "ff:ff:ff:ff:ff:ff",
            "01:00:5e:00:00:01",
            "002:00:00:00:00:01",
        ] {
            assert!(parse_mac(bad).is_err(), "{bad} accepted");
        }
        assert_eq!(format_mac(&[2, 0, 0, 0, 0, 10]), "02:00:00:00:00:0a");
    }
}
