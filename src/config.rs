//! The node's configuration file: `config.toml` in the data dir. Every field is optional;
//! command-line flags override what the file says.
//!
//! ```toml
//! listen = ["/ip4/0.0.0.0/tcp/4001"]
//! bootstrap = ["/ip4/203.0.113.7/tcp/4001/p2p/12D3KooW…"]
//! mdns = true
//! upnp = true                 # ask the home router for a port mapping
//! external = []               # addresses others reach this node at (e.g. a forwarded port)
//!
//! [limits]
//! max_established = 256       # connections in all
//! max_incoming = 192          # of which inbound
//! max_pending_incoming = 32   # inbound handshakes at once
//! max_per_peer = 3            # connections to one peer (a hole punched beside two relayed)
//!
//! [relay]                     # what this node offers others once it is reachable
//! serve = true
//! max_reservations = 128      # nodes behind NATs that may be reached through this one
//! max_circuits = 64           # relayed connections at once
//! max_circuits_per_peer = 8
//! max_circuit_secs = 3600     # a relayed connection's longest life (it is dialed again)
//! max_circuit_bytes = 67108864 # bytes each way per relayed connection (64 MiB); 0: no limit
//!
//! [web]
//! listen = "127.0.0.1:7780"   # the page (loopback only); a free port if this one is taken
//! enabled = true
//! ```

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::net::{Limits, RelayLimits};

/// File name of the configuration inside the data dir.
pub const CONFIG_FILE: &str = "config.toml";

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Addresses to listen on; empty means all IPv4 interfaces, reusing the last port.
    pub listen: Vec<String>,
    /// Nodes to connect to at start.
    pub bootstrap: Vec<String>,
    /// Discover peers on the local network.
    pub mdns: bool,
    /// Ask the router for a port mapping (UPnP), when listening beyond loopback.
    pub upnp: bool,
    /// Addresses others can reach this node at, beyond what AutoNAT finds (a forwarded port).
    pub external: Vec<String>,
    pub limits: LimitsConfig,
    pub relay: RelayConfig,
    pub web: WebConfig,
}

/// The page the node serves (see [`crate::web`]).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WebConfig {
    /// A loopback address and port.
    pub listen: String,
    pub enabled: bool,
}

impl Default for WebConfig {
    fn default() -> Self {
        WebConfig {
            listen: crate::web::DEFAULT_LISTEN.to_string(),
            enabled: true,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimitsConfig {
    pub max_established: u32,
    pub max_incoming: u32,
    pub max_pending_incoming: u32,
    pub max_per_peer: u32,
}

/// The relay this node offers once reachable ([`RelayLimits`]).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RelayConfig {
    pub serve: bool,
    pub max_reservations: usize,
    pub max_circuits: usize,
    pub max_circuits_per_peer: usize,
    pub max_circuit_secs: u64,
    pub max_circuit_bytes: u64,
}

impl Default for RelayConfig {
    fn default() -> Self {
        let r = RelayLimits::default();
        RelayConfig {
            serve: r.serve,
            max_reservations: r.max_reservations,
            max_circuits: r.max_circuits,
            max_circuits_per_peer: r.max_circuits_per_peer,
            max_circuit_secs: r.max_circuit_duration.as_secs(),
            max_circuit_bytes: r.max_circuit_bytes,
        }
    }
}

impl From<&RelayConfig> for RelayLimits {
    fn from(c: &RelayConfig) -> RelayLimits {
        RelayLimits {
            serve: c.serve,
            max_reservations: c.max_reservations,
            max_circuits: c.max_circuits,
            max_circuits_per_peer: c.max_circuits_per_peer,
            max_circuit_duration: std::time::Duration::from_secs(c.max_circuit_secs),
            max_circuit_bytes: c.max_circuit_bytes,
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: Vec::new(),
            bootstrap: Vec::new(),
            mdns: true,
            upnp: true,
            external: Vec::new(),
            limits: LimitsConfig::default(),
            relay: RelayConfig::default(),
            web: WebConfig::default(),
        }
    }
}

impl Default for LimitsConfig {
    fn default() -> Self {
        let l = Limits::default();
        LimitsConfig {
            max_established: l.max_established,
            max_incoming: l.max_incoming,
            max_pending_incoming: l.max_pending_incoming,
            max_per_peer: l.max_per_peer,
        }
    }
}

impl From<&LimitsConfig> for Limits {
    fn from(c: &LimitsConfig) -> Limits {
        Limits {
            max_established: c.max_established,
            max_incoming: c.max_incoming,
            max_pending_incoming: c.max_pending_incoming,
            max_per_peer: c.max_per_peer,
        }
    }
}

impl Config {
    /// Reads `config.toml` from `home`; no file means the defaults.
    pub fn load(home: &Path) -> Result<Config> {
        let path = home.join(CONFIG_FILE);
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Config::default()),
            Err(source) => return Err(Error::Io { path, source }),
        };
        let config: Config = toml::from_str(&text).map_err(|e| {
            Error::Invalid(format!(
                "{}: {}",
                path.display(),
                e.message().trim().replace('\n', " ")
            ))
        })?;
        config.check(&path)?;
        Ok(config)
    }

    fn check(&self, path: &Path) -> Result<()> {
        for a in self.listen.iter().chain(&self.bootstrap).chain(&self.external) {
            a.parse::<libp2p::Multiaddr>().map_err(|_| {
                Error::Invalid(format!("{}: '{a}' is not a multiaddr", path.display()))
            })?;
        }
        match self.web.listen.parse::<std::net::SocketAddr>() {
            Ok(a) if a.ip().is_loopback() => {}
            _ => {
                return Err(Error::Invalid(format!(
                    "{}: web.listen '{}' is not a loopback address and port (e.g. 127.0.0.1:7780)",
                    path.display(),
                    self.web.listen
                )))
            }
        }
        let l = &self.limits;
        if l.max_established == 0 || l.max_per_peer == 0 || l.max_incoming > l.max_established {
            return Err(Error::Invalid(format!(
                "{}: connection limits must be positive, with max_incoming ≤ max_established",
                path.display()
            )));
        }
        let r = &self.relay;
        if r.serve && (r.max_circuits == 0 || r.max_circuit_secs == 0) {
            return Err(Error::Invalid(format!(
                "{}: relay.max_circuits and relay.max_circuit_secs must be positive (or relay.serve = false)",
                path.display()
            )));
        }
        Ok(())
    }

    pub fn external_addrs(&self) -> Vec<libp2p::Multiaddr> {
        self.external.iter().filter_map(|a| a.parse().ok()).collect()
    }

    /// Where the page is served, if it is (the address was checked at load).
    pub fn web_addr(&self) -> Option<std::net::SocketAddr> {
        self.web.enabled.then(|| self.web.listen.parse().ok()).flatten()
    }

    pub fn listen_addrs(&self) -> Vec<libp2p::Multiaddr> {
        self.listen.iter().filter_map(|a| a.parse().ok()).collect()
    }

    pub fn bootstrap_addrs(&self) -> Vec<libp2p::Multiaddr> {
        self.bootstrap
            .iter()
            .filter_map(|a| a.parse().ok())
            .collect()
    }

    /// The configuration as TOML, for `coflow config show`.
    pub fn to_toml(&self) -> String {
        toml::to_string(self).expect("the configuration serializes")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_without_a_file_and_clear_errors_for_bad_ones() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(Config::load(dir.path()).unwrap(), Config::default());
        std::fs::write(
            dir.path().join(CONFIG_FILE),
            "listen = [\"/ip4/127.0.0.1/tcp/4001\"]\nmdns = false\n[limits]\nmax_per_peer = 1\n",
        )
        .unwrap();
        let c = Config::load(dir.path()).unwrap();
        assert!(!c.mdns);
        assert_eq!(c.limits.max_per_peer, 1);
        assert_eq!(c.limits.max_established, Limits::default().max_established);
        assert_eq!(c.listen_addrs().len(), 1);
        for bad in [
            "listen = [\"nope\"]",
            "mdsn = true",
            "listen = 5",
            "[limits]\nmax_per_peer = 0",
            "[web]\nlisten = \"0.0.0.0:7780\"",
            "[web]\nlisten = \"localhost\"",
        ] {
            std::fs::write(dir.path().join(CONFIG_FILE), bad).unwrap();
            let err = Config::load(dir.path()).unwrap_err().to_string();
            assert!(err.contains("config.toml"), "{bad}: {err}");
            assert_eq!(err.lines().count(), 1, "{err}");
        }
    }
}
