//! MAC, IPv4 and IPv6 addresses as the CLI and the logs write them.

use std::{
    fmt,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    str::FromStr,
};

/// An Ethernet address, printed `02:00:00:00:00:01`.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Mac(pub [u8; 6]);

impl Mac {
    pub fn is_multicast(&self) -> bool {
        self.0[0] & 1 != 0
    }

    pub fn is_zero(&self) -> bool {
        self.0 == [0; 6]
    }
}

impl fmt::Display for Mac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [a, b, c, d, e, g] = self.0;
        write!(f, "{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{g:02x}")
    }
}

impl fmt::Debug for Mac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl FromStr for Mac {
    type Err = String;

    /// Six hex octets separated by `:` or `-`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || format!("invalid MAC address {s:?}: expected six hex octets like 02:00:00:00:00:01");
        let mut out = [0u8; 6];
        let mut parts = s.split([':', '-']);
        for byte in out.iter_mut() {
            let part = parts.next().ok_or_else(bad)?;
            if part.is_empty() || part.len() > 2 {
                return Err(bad());
            }
            *byte = u8::from_str_radix(part, 16).map_err(|_| bad())?;
        }
        if parts.next().is_some() {
            return Err(bad());
        }
        Ok(Mac(out))
    }
}

/// A MAC a host can own: not zero, not broadcast or multicast.
pub fn parse_host_mac(s: &str) -> Result<Mac, String> {
    let mac: Mac = s.parse()?;
    if mac.is_zero() || mac.is_multicast() {
        return Err(format!("{mac} is not a host MAC address (zero, broadcast or multicast)"));
    }
    Ok(mac)
}

/// An IPv4 address a host can own: not 0.0.0.0, broadcast, multicast or loopback.
pub fn parse_host_ip(s: &str) -> Result<Ipv4Addr, String> {
    let ip: Ipv4Addr =
        s.parse().map_err(|_| format!("invalid IPv4 address {s:?}: expected dotted quad like 10.0.3.5"))?;
    if ip.is_unspecified() || ip.is_broadcast() || ip.is_multicast() || ip.is_loopback() {
        return Err(format!("{ip} is not a host address (unspecified, broadcast, multicast or loopback)"));
    }
    Ok(ip)
}

/// An IPv6 address a host can own: not ::, multicast or loopback.
pub fn parse_host_ip6(s: &str) -> Result<Ipv6Addr, String> {
    let ip: Ipv6Addr = s.parse().map_err(|_| format!("invalid IPv6 address {s:?}: expected one like fd00::5"))?;
    if ip.is_unspecified() || ip.is_multicast() || ip.is_loopback() {
        return Err(format!("{ip} is not a host address (unspecified, multicast or loopback)"));
    }
    Ok(ip)
}

/// An IPv4 or IPv6 address a host can own.
pub fn parse_host_addr(s: &str) -> Result<IpAddr, String> {
    if s.contains(':') { parse_host_ip6(s).map(IpAddr::V6) } else { parse_host_ip(s).map(IpAddr::V4) }
}

/// An IPv6 address as a message names it: any, `::` and multicast included.
pub fn parse_ip6(s: &str) -> Result<Ipv6Addr, String> {
    s.parse().map_err(|_| format!("invalid IPv6 address {s:?}: expected one like fd00::5"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn macs_round_trip_in_both_notations() {
        let mac: Mac = "02:0A:0b:00:00:ff".parse().unwrap();
        assert_eq!(mac.0, [2, 10, 11, 0, 0, 255]);
        assert_eq!(mac.to_string(), "02:0a:0b:00:00:ff");
        assert_eq!("02-0a-0b-00-00-ff".parse::<Mac>().unwrap(), mac);
    }

    #[test]
    fn malformed_macs_are_refused() {
        for bad in
            ["", "02:00:00:00:00", "02:00:00:00:00:00:00", "02:00:00:00:00:0g", "002:00:00:00:00:01", "02::00:00:00:01"]
        {
            assert!(bad.parse::<Mac>().is_err(), "{bad:?} parsed");
        }
    }

    #[test]
    fn only_host_addresses_are_accepted() {
        assert!(parse_host_mac("02:00:00:00:00:01").is_ok());
        assert!(parse_host_mac("ff:ff:ff:ff:ff:ff").is_err());
        assert!(parse_host_mac("01:00:5e:00:00:01").is_err());
        assert!(parse_host_mac("00:00:00:00:00:00").is_err());
        assert_eq!(parse_host_ip("10.0.3.104").unwrap(), Ipv4Addr::new(10, 0, 3, 104));
        for bad in ["0.0.0.0", "255.255.255.255", "224.0.0.1", "127.0.0.1", "10.0.3", "10.0.3.256", "x"] {
            assert!(parse_host_ip(bad).is_err(), "{bad:?} accepted");
        }
    }
}
