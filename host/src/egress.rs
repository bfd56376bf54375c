//! Where webhooks may go: the guard against server-side request forgery.
//!
//! Whoever registers a subscription chooses its URL, and the status shows the
//! first KiB of what answered. Without a guard wasmhook would read the cloud
//! metadata service, services on loopback and the private network for them,
//! and map their ports. [`DestinationPolicy::check`] refuses every address that
//! is not public unicast — loopback, private, link-local, CGNAT, multicast,
//! IPv6 addresses that embed such an IPv4 address, and the like — unless the
//! operator allowed it with `--allowed-destinations`.
//!
//! The check is made where the address is final, on every new connection:
//! [`GuardedResolver`] drops refused addresses from what a name resolves to (a
//! name that rebinds to an internal address after registration is still
//! refused), and the sender checks IP-literal hosts, which the HTTP client
//! never resolves. Registration refuses IP literals early; names are judged
//! only at delivery, since what they resolve to may change. Apart from the
//! resolution itself this module does no I/O: it classifies and explains.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::str::FromStr;
use std::sync::Arc;

use ipnet::{IpNet, Ipv4Net, Ipv6Net};

/// How a refusal tells the operator to lift it.
const HOW_TO_ALLOW: &str = "webhooks go only to public addresses unless \
     --allowed-destinations (WASMHOOK_ALLOWED_DESTINATIONS) includes";

/// Which addresses, beyond public ones, webhooks may be sent to. Cheap to clone.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DestinationPolicy {
    allowed: Arc<[IpNet]>,
}

/// Why an address is not public, in words an operator recognises.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AddressKind {
    Loopback,
    Private,
    LinkLocal,
    SharedCgnat,
    Multicast,
    Unspecified,
    Broadcast,
    ThisNetwork,
    Reserved,
    Benchmarking,
    Documentation,
    ProtocolAssignment,
    UniqueLocal,
    SiteLocal,
    Teredo,
    LocalNat64,
    NotGlobalUnicast,
}

impl fmt::Display for AddressKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            AddressKind::Loopback => "loopback",
            AddressKind::Private => "private (RFC 1918)",
            AddressKind::LinkLocal => "link-local",
            AddressKind::SharedCgnat => "shared address space (CGNAT, 100.64.0.0/10)",
            AddressKind::Multicast => "multicast",
            AddressKind::Unspecified => "unspecified",
            AddressKind::Broadcast => "broadcast",
            AddressKind::ThisNetwork => "\"this network\" (0.0.0.0/8)",
            AddressKind::Reserved => "reserved",
            AddressKind::Benchmarking => "benchmarking",
            AddressKind::Documentation => "documentation",
            AddressKind::ProtocolAssignment => "IETF protocol assignment",
            AddressKind::UniqueLocal => "unique-local (fc00::/7)",
            AddressKind::SiteLocal => "site-local (fec0::/10)",
            AddressKind::Teredo => "Teredo tunnel (2001::/32)",
            AddressKind::LocalNat64 => "local-use NAT64 (64:ff9b:1::/48)",
            AddressKind::NotGlobalUnicast => "not global unicast (outside 2000::/3)",
        })
    }
}

/// An IPv6 address that stands for an IPv4 one, and is judged by it: a
/// connection to it reaches (or is translated to) that IPv4 address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Embedding {
    /// `::ffff:a.b.c.d`: the socket layer connects to a.b.c.d over IPv4.
    Mapped,
    /// `::a.b.c.d` (deprecated).
    Compatible,
    /// `64:ff9b::a.b.c.d`: a NAT64 gateway translates to a.b.c.d.
    Nat64,
    /// `2002:aabb:ccdd::/48`: a 6to4 relay forwards to a.b.c.d.
    SixToFour,
}

impl fmt::Display for Embedding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Embedding::Mapped => "IPv4-mapped",
            Embedding::Compatible => "IPv4-compatible",
            Embedding::Nat64 => "NAT64",
            Embedding::SixToFour => "6to4",
        })
    }
}

/// An address webhooks may not go to, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefusedAddress {
    pub address: IpAddr,
    pub kind: AddressKind,
    /// The IPv4 address it was judged by, when it embeds one.
    pub embedded: Option<(Embedding, Ipv4Addr)>,
}

impl RefusedAddress {
    /// `127.0.0.1 (loopback)`, `::ffff:10.0.0.1 (IPv4-mapped 10.0.0.1: private (RFC 1918))`.
    pub fn summary(&self) -> String {
        match self.embedded {
            None => format!("{} ({})", self.address, self.kind),
            Some((embedding, v4)) => {
                format!("{} ({embedding} {v4}: {})", self.address, self.kind)
            }
        }
    }
}

impl fmt::Display for RefusedAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "the address {} is refused: {HOW_TO_ALLOW} it",
            self.summary()
        )
    }
}

impl std::error::Error for RefusedAddress {}

/// A name that resolved only to refused addresses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefusedResolution {
    pub host: String,
    pub refused: Vec<RefusedAddress>,
}

impl fmt::Display for RefusedResolution {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let addresses: Vec<String> = self.refused.iter().map(RefusedAddress::summary).collect();
        write!(
            f,
            "the webhook host {} resolved to {}, refused: {HOW_TO_ALLOW} them",
            self.host,
            addresses.join(", ")
        )
    }
}

impl std::error::Error for RefusedResolution {}

/// An entry of `--allowed-destinations` that is neither a CIDR nor an address.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{entry:?} is not a CIDR or an IP address (expected e.g. 10.0.0.0/8, 192.168.1.5, fd00::/8)"
)]
pub struct BadAllowedDestination {
    pub entry: String,
}

impl DestinationPolicy {
    /// Public addresses only (the default with real brokers).
    pub fn public_only() -> Self {
        Self::default()
    }

    /// Public addresses and these ranges.
    pub fn allowing(nets: impl IntoIterator<Item = IpNet>) -> Self {
        Self {
            allowed: nets.into_iter().map(|net| net.trunc()).collect(),
        }
    }

    /// Public addresses and loopback (127.0.0.0/8, ::1/128): the default with
    /// the embedded broker, where wasmhook and its receivers share a laptop.
    pub fn allowing_loopback() -> Self {
        Self::allowing([
            IpNet::V4(Ipv4Net::new_assert(Ipv4Addr::new(127, 0, 0, 0), 8)),
            IpNet::V6(Ipv6Net::new_assert(Ipv6Addr::LOCALHOST, 128)),
        ])
    }

    /// The ranges allowed beyond public addresses.
    pub fn allowed(&self) -> &[IpNet] {
        &self.allowed
    }

    /// For the start-up banner: `public addresses only`, or `public addresses and 10.0.0.0/8, ::1/128`.
    pub fn describe(&self) -> String {
        if self.allowed.is_empty() {
            "public addresses only".into()
        } else {
            let nets: Vec<String> = self.allowed.iter().map(IpNet::to_string).collect();
            format!("public addresses and {}", nets.join(", "))
        }
    }

    /// Whether webhooks may be sent to `ip`.
    pub fn check(&self, ip: IpAddr) -> Result<(), RefusedAddress> {
        if self.is_allowed(ip) {
            return Ok(());
        }
        match classify(ip) {
            Class::Public => Ok(()),
            Class::Refused(kind) => Err(RefusedAddress {
                address: ip,
                kind,
                embedded: None,
            }),
            Class::Embeds(embedding, v4) => {
                if self.is_allowed(IpAddr::V4(v4)) {
                    return Ok(());
                }
                match classify(IpAddr::V4(v4)) {
                    Class::Refused(kind) => Err(RefusedAddress {
                        address: ip,
                        kind,
                        embedded: Some((embedding, v4)),
                    }),
                    // An IPv4 address never embeds another.
                    Class::Public | Class::Embeds(..) => Ok(()),
                }
            }
        }
    }

    /// Checks a URL whose host is an IP literal; a name passes (it is checked
    /// when it is resolved, on every connection).
    pub fn check_url(&self, url: &url::Url) -> Result<(), RefusedAddress> {
        match url.host() {
            Some(url::Host::Ipv4(ip)) => self.check(IpAddr::V4(ip)),
            Some(url::Host::Ipv6(ip)) => self.check(IpAddr::V6(ip)),
            Some(url::Host::Domain(_)) | None => Ok(()),
        }
    }

    /// Keeps the addresses `host` resolved to that may be connected to;
    /// fails, naming every address and why, when none may.
    pub fn screen(
        &self,
        host: &str,
        resolved: impl IntoIterator<Item = SocketAddr>,
    ) -> Result<Vec<SocketAddr>, RefusedResolution> {
        let mut kept = Vec::new();
        let mut refused: Vec<RefusedAddress> = Vec::new();
        for address in resolved {
            match self.check(address.ip()) {
                Ok(()) => kept.push(address),
                Err(refusal) => {
                    if !refused.iter().any(|r| r.address == refusal.address) {
                        refused.push(refusal);
                    }
                }
            }
        }
        if kept.is_empty() && !refused.is_empty() {
            Err(RefusedResolution {
                host: host.to_string(),
                refused,
            })
        } else {
            Ok(kept)
        }
    }

    fn is_allowed(&self, ip: IpAddr) -> bool {
        self.allowed.iter().any(|net| net.contains(&ip))
    }
}

/// `--allowed-destinations`: CIDRs separated by commas; a bare address means
/// /32 or /128; empty means public addresses only.
impl FromStr for DestinationPolicy {
    type Err = BadAllowedDestination;

    fn from_str(list: &str) -> Result<Self, Self::Err> {
        let nets = list
            .split(',')
            .map(str::trim)
            .filter(|entry| !entry.is_empty())
            .map(|entry| {
                entry
                    .parse::<IpNet>()
                    .or_else(|_| entry.parse::<IpAddr>().map(IpNet::from))
                    .map_err(|_| BadAllowedDestination {
                        entry: entry.to_string(),
                    })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self::allowing(nets))
    }
}

/// What an address is, before any allowance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Class {
    Public,
    Refused(AddressKind),
    Embeds(Embedding, Ipv4Addr),
}

fn classify(ip: IpAddr) -> Class {
    match ip {
        IpAddr::V4(ip) => match classify_v4(ip) {
            Some(kind) => Class::Refused(kind),
            None => Class::Public,
        },
        IpAddr::V6(ip) => classify_v6(ip),
    }
}

const fn v4(a: u8, b: u8, c: u8, d: u8, prefix: u8) -> Ipv4Net {
    Ipv4Net::new_assert(Ipv4Addr::new(a, b, c, d), prefix)
}

/// Non-public IPv4 ranges, the more specific first (the IANA special-purpose
/// registry, less the few globally reachable anycast services nobody hosts a
/// webhook on).
const V4_REFUSED: &[(Ipv4Net, AddressKind)] = &[
    (v4(0, 0, 0, 0, 32), AddressKind::Unspecified),
    (v4(255, 255, 255, 255, 32), AddressKind::Broadcast),
    (v4(0, 0, 0, 0, 8), AddressKind::ThisNetwork),
    (v4(10, 0, 0, 0, 8), AddressKind::Private),
    (v4(100, 64, 0, 0, 10), AddressKind::SharedCgnat),
    (v4(127, 0, 0, 0, 8), AddressKind::Loopback),
    (v4(169, 254, 0, 0, 16), AddressKind::LinkLocal),
    (v4(172, 16, 0, 0, 12), AddressKind::Private),
    (v4(192, 0, 0, 0, 24), AddressKind::ProtocolAssignment),
    (v4(192, 0, 2, 0, 24), AddressKind::Documentation),
    // The deprecated 6to4 relay anycast (RFC 7526).
    (v4(192, 88, 99, 0, 24), AddressKind::Reserved),
    (v4(192, 168, 0, 0, 16), AddressKind::Private),
    (v4(198, 18, 0, 0, 15), AddressKind::Benchmarking),
    (v4(198, 51, 100, 0, 24), AddressKind::Documentation),
    (v4(203, 0, 113, 0, 24), AddressKind::Documentation),
    (v4(224, 0, 0, 0, 4), AddressKind::Multicast),
    (v4(240, 0, 0, 0, 4), AddressKind::Reserved),
];

fn classify_v4(ip: Ipv4Addr) -> Option<AddressKind> {
    V4_REFUSED
        .iter()
        .find(|(net, _)| net.contains(&ip))
        .map(|(_, kind)| *kind)
}

const fn v6(segments: [u16; 8], prefix: u8) -> Ipv6Net {
    let [a, b, c, d, e, f, g, h] = segments;
    Ipv6Net::new_assert(Ipv6Addr::new(a, b, c, d, e, f, g, h), prefix)
}

/// Non-public IPv6 ranges inside or beside global unicast, the more specific
/// first. Whatever is outside 2000::/3 and not named here is refused too.
const V6_REFUSED: &[(Ipv6Net, AddressKind)] = &[
    (v6([0, 0, 0, 0, 0, 0, 0, 0], 128), AddressKind::Unspecified),
    (v6([0, 0, 0, 0, 0, 0, 0, 1], 128), AddressKind::Loopback),
    (
        v6([0x64, 0xff9b, 1, 0, 0, 0, 0, 0], 48),
        AddressKind::LocalNat64,
    ),
    // Discard-only (RFC 6666).
    (v6([0x100, 0, 0, 0, 0, 0, 0, 0], 64), AddressKind::Reserved),
    (v6([0x2001, 0, 0, 0, 0, 0, 0, 0], 32), AddressKind::Teredo),
    (
        v6([0x2001, 2, 0, 0, 0, 0, 0, 0], 48),
        AddressKind::Benchmarking,
    ),
    (
        v6([0x2001, 0, 0, 0, 0, 0, 0, 0], 23),
        AddressKind::ProtocolAssignment,
    ),
    (
        v6([0x2001, 0xdb8, 0, 0, 0, 0, 0, 0], 32),
        AddressKind::Documentation,
    ),
    (
        v6([0x3fff, 0, 0, 0, 0, 0, 0, 0], 20),
        AddressKind::Documentation,
    ),
    (
        v6([0xfc00, 0, 0, 0, 0, 0, 0, 0], 7),
        AddressKind::UniqueLocal,
    ),
    (
        v6([0xfe80, 0, 0, 0, 0, 0, 0, 0], 10),
        AddressKind::LinkLocal,
    ),
    (
        v6([0xfec0, 0, 0, 0, 0, 0, 0, 0], 10),
        AddressKind::SiteLocal,
    ),
    (v6([0xff00, 0, 0, 0, 0, 0, 0, 0], 8), AddressKind::Multicast),
];

const MAPPED: Ipv6Net = v6([0, 0, 0, 0, 0, 0xffff, 0, 0], 96);
const COMPATIBLE: Ipv6Net = v6([0, 0, 0, 0, 0, 0, 0, 0], 96);
const NAT64: Ipv6Net = v6([0x64, 0xff9b, 0, 0, 0, 0, 0, 0], 96);
const SIX_TO_FOUR: Ipv6Net = v6([0x2002, 0, 0, 0, 0, 0, 0, 0], 16);
const GLOBAL_UNICAST: Ipv6Net = v6([0x2000, 0, 0, 0, 0, 0, 0, 0], 3);

fn classify_v6(ip: Ipv6Addr) -> Class {
    if let Some((_, kind)) = V6_REFUSED.iter().find(|(net, _)| net.contains(&ip)) {
        return Class::Refused(*kind);
    }
    let bits = ip.to_bits();
    // The IPv4 address in the low 32 bits, or in bits 16..48 for 6to4.
    let low = Ipv4Addr::from_bits(bits as u32);
    let embedded = if MAPPED.contains(&ip) {
        Some((Embedding::Mapped, low))
    } else if COMPATIBLE.contains(&ip) {
        Some((Embedding::Compatible, low))
    } else if NAT64.contains(&ip) {
        Some((Embedding::Nat64, low))
    } else if SIX_TO_FOUR.contains(&ip) {
        Some((
            Embedding::SixToFour,
            Ipv4Addr::from_bits((bits >> 80) as u32),
        ))
    } else {
        None
    };
    match embedded {
        Some((embedding, v4)) => Class::Embeds(embedding, v4),
        None if GLOBAL_UNICAST.contains(&ip) => Class::Public,
        None => Class::Refused(AddressKind::NotGlobalUnicast),
    }
}

/// Resolves webhook hosts with the system resolver and keeps only the
/// addresses the policy allows. The HTTP client asks it on every new
/// connection, so the check follows the name's current answer.
#[derive(Debug, Clone)]
pub struct GuardedResolver {
    policy: DestinationPolicy,
}

impl GuardedResolver {
    pub fn new(policy: DestinationPolicy) -> Self {
        Self { policy }
    }
}

impl reqwest::dns::Resolve for GuardedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let policy = self.policy.clone();
        let host = name.as_str().to_string();
        Box::pin(async move {
            // Port 0: the client puts the URL's port in.
            let resolved = tokio::net::lookup_host((host.as_str(), 0)).await?;
            let kept = policy.screen(&host, resolved)?;
            let addresses: reqwest::dns::Addrs = Box::new(kept.into_iter());
            Ok(addresses)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    /// The refusal's kind, or None when the address is accepted.
    fn judged(policy: &DestinationPolicy, address: &str) -> Option<AddressKind> {
        policy.check(ip(address)).err().map(|refused| refused.kind)
    }

    #[test]
    fn public_addresses_are_accepted() {
        let policy = DestinationPolicy::public_only();
        for address in [
            "1.1.1.1",
            "8.8.8.8",
            "93.184.216.34",
            "100.63.255.255",
            "100.128.0.0",
            "172.15.255.255",
            "172.32.0.0",
            "192.167.255.255",
            "192.169.0.0",
            "198.17.255.255",
            "198.20.0.0",
            "223.255.255.255",
            "2606:4700:4700::1111",
            "2a00:1450:4001:81b::200e",
            "2001:4860:4860::8888",
            "::ffff:8.8.8.8",
            "64:ff9b::808:808",
            "2002:808:808::1",
        ] {
            assert_eq!(judged(&policy, address), None, "{address}");
        }
    }

    #[test]
    fn every_special_range_is_refused_with_its_kind() {
        use AddressKind::*;
        let policy = DestinationPolicy::public_only();
        let table = [
            ("127.0.0.1", Loopback),
            ("127.255.255.254", Loopback),
            ("10.0.0.1", Private),
            ("10.255.255.255", Private),
            ("172.16.0.1", Private),
            ("172.31.255.255", Private),
            ("192.168.1.1", Private),
            ("169.254.169.254", LinkLocal),
            ("100.64.0.1", SharedCgnat),
            ("100.127.255.255", SharedCgnat),
            ("224.0.0.1", Multicast),
            ("239.255.255.250", Multicast),
            ("0.0.0.0", Unspecified),
            ("0.1.2.3", ThisNetwork),
            ("255.255.255.255", Broadcast),
            ("240.0.0.1", Reserved),
            ("192.88.99.1", Reserved),
            ("198.18.0.1", Benchmarking),
            ("198.19.255.255", Benchmarking),
            ("192.0.0.8", ProtocolAssignment),
            ("192.0.2.1", Documentation),
            ("198.51.100.7", Documentation),
            ("203.0.113.9", Documentation),
            ("::", Unspecified),
            ("::1", Loopback),
            ("fe80::1", LinkLocal),
            ("febf::1", LinkLocal),
            ("fc00::1", UniqueLocal),
            ("fd12:3456::1", UniqueLocal),
            ("fec0::1", SiteLocal),
            ("ff02::1", Multicast),
            ("ff0e::1", Multicast),
            ("2001:db8::1", Documentation),
            ("3fff::1", Documentation),
            ("2001::1", Teredo),
            ("2001:0:4136:e378:8000:63bf:3fff:fdd2", Teredo),
            ("2001:2::1", Benchmarking),
            ("2001:10::1", ProtocolAssignment),
            ("100::1", Reserved),
            ("64:ff9b:1::a00:1", LocalNat64),
            ("4000::1", NotGlobalUnicast),
            ("::2:0:0:1", NotGlobalUnicast),
        ];
        for (address, kind) in table {
            assert_eq!(judged(&policy, address), Some(kind), "{address}");
        }
    }

    #[test]
    fn ipv6_addresses_embedding_ipv4_are_judged_by_the_ipv4_address() {
        let policy = DestinationPolicy::public_only();
        let table = [
            (
                "::ffff:127.0.0.1",
                Embedding::Mapped,
                "127.0.0.1",
                AddressKind::Loopback,
            ),
            (
                "::ffff:a9fe:a9fe",
                Embedding::Mapped,
                "169.254.169.254",
                AddressKind::LinkLocal,
            ),
            (
                "::10.0.0.1",
                Embedding::Compatible,
                "10.0.0.1",
                AddressKind::Private,
            ),
            (
                "64:ff9b::127.0.0.1",
                Embedding::Nat64,
                "127.0.0.1",
                AddressKind::Loopback,
            ),
            (
                "64:ff9b::c0a8:101",
                Embedding::Nat64,
                "192.168.1.1",
                AddressKind::Private,
            ),
            (
                "2002:7f00:1::",
                Embedding::SixToFour,
                "127.0.0.1",
                AddressKind::Loopback,
            ),
            (
                "2002:a9fe:a9fe:1::5",
                Embedding::SixToFour,
                "169.254.169.254",
                AddressKind::LinkLocal,
            ),
        ];
        for (address, embedding, v4, kind) in table {
            let refused = policy.check(ip(address)).unwrap_err();
            assert_eq!(refused.address, ip(address));
            assert_eq!(refused.kind, kind, "{address}");
            assert_eq!(
                refused.embedded,
                Some((embedding, v4.parse().unwrap())),
                "{address}"
            );
        }
    }

    #[test]
    fn an_allowed_range_lets_its_addresses_through_and_no_others() {
        let policy: DestinationPolicy = "10.1.0.0/16, fd00::/8".parse().unwrap();
        assert_eq!(judged(&policy, "10.1.2.3"), None);
        assert_eq!(judged(&policy, "fd00::5"), None);
        assert_eq!(judged(&policy, "10.2.0.1"), Some(AddressKind::Private));
        assert_eq!(judged(&policy, "127.0.0.1"), Some(AddressKind::Loopback));
        // An embedded address is allowed when its IPv4 address is.
        assert_eq!(judged(&policy, "::ffff:10.1.0.9"), None);
        assert_eq!(
            judged(&policy, "::ffff:10.2.0.9"),
            Some(AddressKind::Private)
        );
    }

    #[test]
    fn loopback_allowance_covers_both_families_and_nothing_else() {
        let policy = DestinationPolicy::allowing_loopback();
        for address in ["127.0.0.1", "127.1.2.3", "::1", "::ffff:127.0.0.1"] {
            assert_eq!(judged(&policy, address), None, "{address}");
        }
        assert_eq!(
            judged(&policy, "169.254.169.254"),
            Some(AddressKind::LinkLocal)
        );
        assert_eq!(judged(&policy, "10.0.0.1"), Some(AddressKind::Private));
        assert_eq!(judged(&policy, "0.0.0.0"), Some(AddressKind::Unspecified));
    }

    #[test]
    fn the_allowed_list_parses_cidrs_and_bare_addresses() {
        let policy: DestinationPolicy = " 10.0.0.0/8,192.168.1.5 ,::1,fd00::/8,".parse().unwrap();
        let shown: Vec<String> = policy.allowed().iter().map(IpNet::to_string).collect();
        assert_eq!(
            shown,
            ["10.0.0.0/8", "192.168.1.5/32", "::1/128", "fd00::/8"]
        );
        // Host bits are dropped, so the banner shows the range.
        let policy: DestinationPolicy = "10.1.2.3/8".parse().unwrap();
        assert_eq!(policy.describe(), "public addresses and 10.0.0.0/8");
        assert_eq!(
            "".parse::<DestinationPolicy>().unwrap(),
            DestinationPolicy::public_only()
        );
    }

    #[test]
    fn a_bad_entry_is_named_in_the_error() {
        for (list, entry) in [
            ("10.0.0.0/33", "10.0.0.0/33"),
            ("10.0.0.0/8,localhost", "localhost"),
            ("10.0.0.0/8; 127.0.0.1", "10.0.0.0/8; 127.0.0.1"),
            ("fd00::/129", "fd00::/129"),
        ] {
            let error = list.parse::<DestinationPolicy>().unwrap_err();
            assert_eq!(error.entry, entry);
            assert!(error.to_string().contains("is not a CIDR"), "{error}");
        }
    }

    #[test]
    fn a_refusal_names_the_address_its_kind_and_how_to_allow_it() {
        let policy = DestinationPolicy::public_only();
        let text = policy.check(ip("169.254.169.254")).unwrap_err().to_string();
        assert!(text.contains("169.254.169.254 (link-local)"), "{text}");
        assert!(text.contains("--allowed-destinations"), "{text}");
        let text = policy
            .check(ip("::ffff:127.0.0.1"))
            .unwrap_err()
            .to_string();
        assert!(
            text.contains("::ffff:127.0.0.1 (IPv4-mapped 127.0.0.1: loopback)"),
            "{text}"
        );
    }

    #[test]
    fn urls_are_checked_only_when_their_host_is_an_ip_literal() {
        let policy = DestinationPolicy::public_only();
        let check = |url: &str| policy.check_url(&url::Url::parse(url).unwrap());
        assert!(check("http://127.0.0.1:8080/hook").is_err());
        assert!(check("http://[::1]/hook").is_err());
        assert!(check("http://[::ffff:7f00:1]/hook").is_err());
        // The URL parser normalises other IPv4 spellings, so they cannot slip by.
        assert!(check("http://2130706433/").is_err());
        assert!(check("http://0x7f.1/").is_err());
        assert!(check("https://93.184.216.34/hook").is_ok());
        assert!(check("http://localhost/hook").is_ok());
        assert!(check("https://example.com/hook").is_ok());
    }

    #[test]
    fn screening_keeps_allowed_addresses_and_fails_only_when_none_is_left() {
        let policy = DestinationPolicy::public_only();
        let at = |text: &str| SocketAddr::new(ip(text), 0);
        let kept = policy
            .screen("mixed.example", [at("10.0.0.1"), at("93.184.216.34")])
            .unwrap();
        assert_eq!(kept, [at("93.184.216.34")]);

        let refused = policy
            .screen("localhost", [at("::1"), at("127.0.0.1"), at("127.0.0.1")])
            .unwrap_err();
        assert_eq!(refused.refused.len(), 2, "duplicates are named once");
        let text = refused.to_string();
        assert!(
            text.starts_with("the webhook host localhost resolved to ::1 (loopback), 127.0.0.1 (loopback), refused"),
            "{text}"
        );
        assert!(text.contains("--allowed-destinations"), "{text}");
    }

    #[test]
    fn the_description_lists_what_is_allowed() {
        assert_eq!(
            DestinationPolicy::public_only().describe(),
            "public addresses only"
        );
        assert_eq!(
            DestinationPolicy::allowing_loopback().describe(),
            "public addresses and 127.0.0.0/8, ::1/128"
        );
    }

    #[tokio::test]
    async fn the_resolver_refuses_a_name_that_resolves_to_loopback() {
        use reqwest::dns::Resolve;
        let resolver = GuardedResolver::new(DestinationPolicy::public_only());
        let error = match resolver.resolve("localhost".parse().unwrap()).await {
            Ok(addresses) => panic!("resolved to {:?}", addresses.collect::<Vec<_>>()),
            Err(error) => error,
        };
        let refused = error
            .downcast_ref::<RefusedResolution>()
            .unwrap_or_else(|| panic!("not a refusal: {error}"));
        assert_eq!(refused.host, "localhost");
        assert!(
            refused
                .refused
                .iter()
                .all(|r| r.kind == AddressKind::Loopback)
        );

        let resolver = GuardedResolver::new(DestinationPolicy::allowing_loopback());
        let addresses: Vec<SocketAddr> = resolver
            .resolve("localhost".parse().unwrap())
            .await
            .unwrap()
            .collect();
        assert!(!addresses.is_empty());
        assert!(addresses.iter().all(|a| a.ip().is_loopback()));
    }
}
