//! Which addresses a Callback step's webhook may reach: not loopback,
//! link-local (where cloud metadata services answer), private, shared
//! (carrier-grade NAT), unspecified or multicast ones, unless
//! `callbacks.webhook_allow` lists the host name or a block holding the
//! address. Pure: the worker's resolver (`worker::webhook`) asks it about
//! every address a host resolves to.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;

/// `callbacks.webhook_allow`, parsed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Policy {
    hosts: Vec<String>,
    nets: Vec<IpNet>,
}

/// The config key that lifts a refusal, named in every refusal message.
pub const ALLOW_KEY: &str = "callbacks.webhook_allow";

impl Policy {
    /// Parses the entries: CIDR blocks, single addresses (`::1` or `[::1]`),
    /// or host names.
    pub fn new(entries: &[String]) -> Result<Policy, String> {
        let mut policy = Policy::default();
        for entry in entries {
            let text = entry.trim();
            if let Ok(net) = text.parse::<IpNet>() {
                policy.nets.push(net.trunc());
            } else if let Ok(ip) = text.trim_start_matches('[').trim_end_matches(']').parse::<IpAddr>() {
                policy.nets.push(IpNet::from(ip));
            } else if is_host_name(text.trim_end_matches('.')) {
                policy.hosts.push(normalize_host(text));
            } else {
                return Err(format!(
                    "{ALLOW_KEY}: {entry:?} is neither a host name, an address nor a CIDR block (like 10.0.0.0/8)"
                ));
            }
        }
        Ok(policy)
    }

    /// Whether `host` (a name from a URL) is listed by name.
    pub fn allows_host(&self, host: &str) -> bool {
        let host = normalize_host(host);
        self.hosts.contains(&host)
    }

    /// Why `ip` may not be called, `None` when it may.
    pub fn refusal(&self, ip: IpAddr) -> Option<&'static str> {
        let plain = canonical(ip);
        if self.nets.iter().any(|n| n.contains(&ip) || n.contains(&plain)) {
            return None;
        }
        restricted_kind(plain)
    }
}

/// The kind of a restricted address, `None` for a public one. IPv4 inside
/// IPv6 (mapped `::ffff:a.b.c.d`, translated `::ffff:0:a.b.c.d`, the
/// deprecated compatible `::a.b.c.d`, NAT64 `64:ff9b::a.b.c.d`, 6to4
/// `2002:AABB:CCDD::`) is judged as the IPv4 address it reaches.
pub fn restricted_kind(ip: IpAddr) -> Option<&'static str> {
    match canonical(ip) {
        IpAddr::V4(v4) => v4_kind(v4),
        IpAddr::V6(v6) => v6_kind(v6),
    }
}

/// The IPv4 address an IPv6 one stands for, or the address itself.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => {
            let s = v6.segments();
            let [_, _, o2, o3, o4, o5, _, _, _, _, _, _, a, b, c, d] = v6.octets();
            let last = Ipv4Addr::new(a, b, c, d);
            if let Some(v4) = v6.to_ipv4_mapped() {
                IpAddr::V4(v4)
            } else if s[..6] == [0x64, 0xff9b, 0, 0, 0, 0]
                || s[..6] == [0, 0, 0, 0, 0xffff, 0]
                || (s[..6] == [0, 0, 0, 0, 0, 0] && !v6.is_loopback() && !v6.is_unspecified())
            {
                IpAddr::V4(last)
            } else if s[0] == 0x2002 {
                IpAddr::V4(Ipv4Addr::new(o2, o3, o4, o5))
            } else {
                ip
            }
        }
        v4 => v4,
    }
}

fn v4_kind(ip: Ipv4Addr) -> Option<&'static str> {
    let [a, b, _, _] = ip.octets();
    if ip.is_loopback() {
        Some("a loopback address")
    } else if ip.is_link_local() {
        Some("a link-local address (where cloud metadata services answer)")
    } else if ip.is_private() {
        Some("a private address")
    } else if a == 0 {
        Some("an unspecified address")
    } else if a == 100 && (b & 0xc0) == 64 {
        Some("a shared (carrier-grade NAT) address")
    } else if ip.is_multicast() || ip.is_broadcast() {
        Some("a multicast or broadcast address")
    } else if a >= 240 || (a == 198 && (b & 0xfe) == 18) {
        Some("a reserved or benchmarking address")
    } else {
        None
    }
}

fn v6_kind(ip: Ipv6Addr) -> Option<&'static str> {
    let first = ip.segments()[0];
    if ip.is_loopback() {
        Some("a loopback address")
    } else if ip.is_unspecified() {
        Some("an unspecified address")
    } else if (first & 0xffc0) == 0xfe80 {
        Some("a link-local address (where cloud metadata services answer)")
    } else if (first & 0xfe00) == 0xfc00 {
        Some("a private address")
    } else if ip.is_multicast() {
        Some("a multicast or broadcast address")
    } else {
        None
    }
}

fn normalize_host(host: &str) -> String {
    host.trim_end_matches('.').to_ascii_lowercase()
}

fn is_host_name(text: &str) -> bool {
    !text.is_empty()
        && text.len() <= 253
        && text
            .split('.')
            .all(|label| !label.is_empty() && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn restricted_addresses_are_refused_by_default() {
        let policy = Policy::default();
        for s in [
            "127.0.0.1",
            "127.9.9.9",
            "::1",
            "169.254.169.254",
            "fe80::1",
            "10.0.0.1",
            "172.16.0.1",
            "172.31.255.255",
            "192.168.1.1",
            "fd00::1",
            "0.0.0.0",
            "::",
            "100.64.0.1",
            "224.0.0.1",
            "255.255.255.255",
            "ff02::1",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
            "64:ff9b::a00:1",
            "::ffff:0:7f00:1",
            "::127.0.0.1",
            "2002:7f00:1::",
            "2002:a9fe:a9fe::1",
            "198.18.0.1",
            "240.0.0.1",
        ] {
            assert!(policy.refusal(ip(s)).is_some(), "{s} should be refused");
        }
        for s in [
            "93.184.216.34",
            "172.32.0.1",
            "100.128.0.1",
            "2606:4700::1111",
            "::ffff:8.8.8.8",
            "2002:808:808::1",
        ] {
            assert_eq!(policy.refusal(ip(s)), None, "{s} should be allowed");
        }
        assert!(policy.refusal(ip("169.254.169.254")).unwrap().contains("metadata"));
    }

    #[test]
    fn listed_blocks_addresses_and_hosts_are_allowed() {
        let entries = ["10.1.0.0/16", "[::1]", "127.0.0.1", "Hooks.Internal."].map(String::from);
        let policy = Policy::new(&entries).unwrap();
        assert_eq!(policy.refusal(ip("10.1.2.3")), None);
        assert!(policy.refusal(ip("10.2.0.1")).is_some());
        assert_eq!(policy.refusal(ip("::1")), None);
        assert_eq!(policy.refusal(ip("::ffff:127.0.0.1")), None);
        assert!(policy.refusal(ip("127.0.0.2")).is_some());
        assert!(policy.allows_host("hooks.internal"));
        assert!(!policy.allows_host("other.internal"));
    }

    #[test]
    fn a_bad_entry_is_named() {
        let err = Policy::new(&["10.0.0.0/33".to_string()]).unwrap_err();
        assert!(
            err.contains("callbacks.webhook_allow") && err.contains("10.0.0.0/33"),
            "{err}"
        );
        assert!(Policy::new(&["http://x".to_string()]).is_err());
    }
}
