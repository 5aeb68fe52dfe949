//! Every port the demo listens on, derived from five flags, checked once before anything
//! starts: a clash inside the plan or a port already taken is reported with the flag that
//! moves it, instead of a child failing to bind halfway through start-up.

use std::{
    fmt,
    io::ErrorKind,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener},
};

/// The address every process of the demo binds and dials.
pub const HOST: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

/// Ports a sidecar block spans: sidecar K starts at `sidecar_base + BLOCK * K`, so the tens
/// digit of a port tells which sidecar it belongs to.
const BLOCK: u32 = 10;

/// The port flags, resolved into the ports of every process.
///
/// | what | port |
/// |---|---|
/// | registry | `registry` |
/// | registry's TLS listener (with mTLS on) | `registry_tls` |
/// | marketplace app | `marketplace` |
/// | marketplace sidecar's upstream listener (what the app dials) | `recommendations` |
/// | recommendations-N app | `app_base + N - 1` |
/// | sidecar K inbound / outbound / admin | `sidecar_base + 10K` / `+ 1` / `+ 2` |
///
/// Sidecar 0 is the marketplace's; sidecar N is recommendations-N's.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PortLayout {
    pub registry: u16,
    /// Where sidecars write with their certificates; `None` with mTLS off.
    pub registry_tls: Option<u16>,
    pub marketplace: u16,
    pub recommendations: u16,
    pub app_base: u16,
    pub sidecar_base: u16,
    pub instances: u8,
}

/// The three listeners of one sidecar.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SidecarPorts {
    /// Where peers' sidecars send calls for this instance (registered as its address).
    pub inbound: u16,
    /// The Host-routed outbound listener.
    pub outbound: u16,
    /// `/ready`, `/live`, `/metrics`, `/debug/endpoints`.
    pub admin: u16,
}

/// One port of the plan: what uses it, and which flag moves it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PortUse {
    pub port: u16,
    pub what: String,
    pub flag: &'static str,
    /// Dialed as `localhost`, which may resolve to `::1` first, so `[::1]` must be free too.
    pub dialed_as_localhost: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum PortError {
    #[error("{flag} {base} puts {what} on port {port}, above 65535; choose a lower {flag}")]
    OutOfRange {
        flag: &'static str,
        base: u16,
        what: String,
        port: u32,
    },

    #[error(
        "port {port} is planned twice: for {} ({}) and for {} ({}); change one of those flags",
        first.what, first.flag, second.what, second.flag
    )]
    Clash {
        port: u16,
        first: PortUse,
        second: PortUse,
    },

    #[error("{}", InUseList(.0))]
    InUse(Vec<PortUse>),
}

// === impl PortLayout ===

impl PortLayout {
    /// Port of recommendations-`n`'s app, `n` from 1.
    pub fn recommendations_app(&self, n: u8) -> u16 {
        offset(self.app_base, u32::from(n) - 1)
    }

    /// Ports of sidecar `k`: 0 is the marketplace's, `n` is recommendations-`n`'s.
    pub fn sidecar(&self, k: u8) -> SidecarPorts {
        let start = BLOCK * u32::from(k);
        SidecarPorts {
            inbound: offset(self.sidecar_base, start),
            outbound: offset(self.sidecar_base, start + 1),
            admin: offset(self.sidecar_base, start + 2),
        }
    }

    /// Every port of the plan, refused if one is above 65535 or two coincide.
    pub fn uses(&self) -> Result<Vec<PortUse>, PortError> {
        let max_app = u32::from(self.app_base) + u32::from(self.instances) - 1;
        check_range(
            "--app-port",
            self.app_base,
            max_app,
            "the last recommendations app",
        )?;
        let max_sidecar = u32::from(self.sidecar_base) + BLOCK * u32::from(self.instances) + 2;
        check_range(
            "--base-port",
            self.sidecar_base,
            max_sidecar,
            "the last sidecar",
        )?;

        let mut uses = vec![PortUse::new(
            self.registry,
            "the registry",
            "--registry-port",
        )];
        if let Some(port) = self.registry_tls {
            uses.push(PortUse::new(
                port,
                "the registry's TLS listener",
                "--registry-tls-port",
            ));
        }
        uses.extend([
            PortUse::new(
                self.marketplace,
                "the marketplace app",
                "--marketplace-port",
            ),
            PortUse {
                dialed_as_localhost: true,
                ..PortUse::new(
                    self.recommendations,
                    "the marketplace sidecar's upstream listener for recommendations",
                    "--recommendations-port",
                )
            },
        ]);
        for n in 1..=self.instances {
            let what = format!("the recommendations-{n} app");
            uses.push(PortUse::new(
                self.recommendations_app(n),
                what,
                "--app-port",
            ));
        }
        for k in 0..=self.instances {
            let sidecar = sidecar_name(k);
            let ports = self.sidecar(k);
            for (port, listener) in [
                (ports.inbound, "inbound"),
                (ports.outbound, "outbound"),
                (ports.admin, "admin"),
            ] {
                let what = format!("{sidecar}'s {listener} listener");
                uses.push(PortUse::new(port, what, "--base-port"));
            }
        }

        for (i, second) in uses.iter().enumerate() {
            if let Some(first) = uses[..i].iter().find(|first| first.port == second.port) {
                return Err(PortError::Clash {
                    port: second.port,
                    first: first.clone(),
                    second: second.clone(),
                });
            }
        }
        Ok(uses)
    }
}

/// The name the launcher gives sidecar `k`.
pub fn sidecar_name(k: u8) -> String {
    match k {
        0 => "sidecar/marketplace".to_owned(),
        n => format!("sidecar/recommendations-{n}"),
    }
}

/// `base + by`, for an offset [`PortLayout::uses`] has checked to stay in range.
fn offset(base: u16, by: u32) -> u16 {
    u16::try_from(u32::from(base) + by).unwrap_or(u16::MAX)
}

fn check_range(flag: &'static str, base: u16, max: u32, what: &str) -> Result<(), PortError> {
    if max > u32::from(u16::MAX) {
        return Err(PortError::OutOfRange {
            flag,
            base,
            what: what.to_owned(),
            port: max,
        });
    }
    Ok(())
}

/// Refuses the plan if any of its ports is already taken on 127.0.0.1, listing every one
/// that is, each with the flag that moves it.
pub fn check_free(uses: &[PortUse]) -> Result<(), PortError> {
    let taken: Vec<PortUse> = uses.iter().filter(|u| !is_free(u)).cloned().collect();
    if taken.is_empty() {
        Ok(())
    } else {
        Err(PortError::InUse(taken))
    }
}

/// Binds the port and lets it go at once. std sets `SO_REUSEADDR` like the children do,
/// so a port only lingering in TIME_WAIT counts as free, as it is for them.
fn is_free(port_use: &PortUse) -> bool {
    if TcpListener::bind(SocketAddr::new(HOST, port_use.port)).is_err() {
        return false;
    }
    if port_use.dialed_as_localhost {
        // Without IPv6 nothing can listen on [::1]; only an address in use means taken.
        let v6 = TcpListener::bind(SocketAddr::new(Ipv6Addr::LOCALHOST.into(), port_use.port));
        if v6.is_err_and(|error| error.kind() == ErrorKind::AddrInUse) {
            return false;
        }
    }
    true
}

// === impl PortUse ===

impl PortUse {
    fn new(port: u16, what: impl Into<String>, flag: &'static str) -> Self {
        Self {
            port,
            what: what.into(),
            flag,
            dialed_as_localhost: false,
        }
    }
}

/// One line per taken port: `port 5000 (the marketplace app) is already in use …`.
struct InUseList<'a>(&'a [PortUse]);

impl fmt::Display for InUseList<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, taken) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            let host = if taken.dialed_as_localhost {
                "localhost"
            } else {
                "127.0.0.1"
            };
            write!(
                f,
                "port {} ({}) is already in use on {host}: stop what holds it or choose \
                 another port with {}",
                taken.port, taken.what, taken.flag,
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn defaults() -> PortLayout {
        PortLayout {
            registry: 7700,
            registry_tls: Some(7743),
            marketplace: 5000,
            recommendations: 5051,
            app_base: 5052,
            sidecar_base: 4140,
            instances: 3,
        }
    }

    #[test]
    fn default_layout() {
        let layout = defaults();
        assert_eq!(layout.recommendations_app(1), 5052);
        assert_eq!(layout.recommendations_app(3), 5054);
        let marketplace = SidecarPorts {
            inbound: 4140,
            outbound: 4141,
            admin: 4142,
        };
        assert_eq!(layout.sidecar(0), marketplace);
        assert_eq!(layout.sidecar(2).inbound, 4160);
        assert_eq!(layout.sidecar(3).admin, 4172);

        let uses = layout.uses().unwrap();
        // Registry and its TLS listener, marketplace, upstream, 3 apps, 4 sidecars × 3
        // listeners.
        assert_eq!(uses.len(), 4 + 3 + 4 * 3);
        let upstream = uses.iter().find(|u| u.port == 5051).unwrap();
        assert_eq!(upstream.flag, "--recommendations-port");
        assert!(upstream.dialed_as_localhost);
        let admin = uses.iter().find(|u| u.port == 4152).unwrap();
        assert_eq!(admin.what, "sidecar/recommendations-1's admin listener");
        assert_eq!(admin.flag, "--base-port");
    }

    #[test]
    fn clashes_name_both_flags() {
        let layout = PortLayout {
            marketplace: 4151,
            ..defaults()
        };
        let error = layout.uses().unwrap_err().to_string();
        assert!(error.contains("port 4151"), "{error}");
        assert!(error.contains("--marketplace-port"), "{error}");
        assert!(error.contains("--base-port"), "{error}");

        let layout = PortLayout {
            app_base: 5050,
            ..defaults()
        };
        let error = layout.uses().unwrap_err().to_string();
        assert!(error.contains("--recommendations-port") && error.contains("--app-port"));
    }

    #[test]
    fn ranges_past_65535_are_refused() {
        let layout = PortLayout {
            sidecar_base: 65520,
            ..defaults()
        };
        let error = layout.uses().unwrap_err().to_string();
        assert!(error.contains("--base-port 65520"), "{error}");
        let layout = PortLayout {
            app_base: 65534,
            ..defaults()
        };
        assert!(
            layout
                .uses()
                .unwrap_err()
                .to_string()
                .contains("--app-port")
        );
        let layout = PortLayout {
            app_base: 65533,
            sidecar_base: 1000,
            ..defaults()
        };
        assert!(layout.uses().is_ok());
    }

    #[test]
    fn a_taken_port_is_reported_with_its_flag() {
        let holder = TcpListener::bind((HOST, 0)).unwrap();
        let port = holder.local_addr().unwrap().port();
        let uses = vec![PortUse::new(port, "the registry", "--registry-port")];
        let error = check_free(&uses).unwrap_err().to_string();
        assert_eq!(
            error,
            format!(
                "port {port} (the registry) is already in use on 127.0.0.1: stop what holds it \
                 or choose another port with --registry-port"
            )
        );
        drop(holder);
        assert!(check_free(&uses).is_ok());
    }
}
