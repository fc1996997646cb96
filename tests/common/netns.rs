//! Hosts as network namespaces, for tests that run a cluster across "machines": each host is a namespace with
//! one veth link to a bridge in the test's own namespace, and an address the test assigns in 198.18.X.0/24 (a
//! range reserved for network tests, RFC 2544). The test's namespace holds `.254`, so it reaches every host;
//! hosts reach each other and it, nothing else. Everything is removed on drop.

use std::net::Ipv4Addr;
use std::process::Command;

use super::OutputWithin;

/// The namespaces and links one test created.
pub struct Network {
    bridge: String,
    hosts: Vec<String>,
    links: Vec<String>,
    subnet: u8,
}

fn ip(args: &[&str]) -> Result<(), String> {
    let output = Command::new("ip").args(args).output_within(super::RUN_LIMIT).map_err(|e| format!("cannot run `ip` (iproute2): {e}"))?;
    if !output.status.success() {
        return Err(format!("`ip {}` failed: {}", args.join(" "), String::from_utf8_lossy(&output.stderr).trim()));
    }
    Ok(())
}

impl Network {
    /// Creates `hosts` namespaces linked by a bridge, or says why it cannot (no root, no iproute2, a
    /// container without `CAP_NET_ADMIN`).
    pub fn create(hosts: usize) -> Result<Network, String> {
        let id = std::process::id() % 100_000;
        let mut network =
            Network { bridge: format!("trb{id}"), hosts: Vec::new(), links: Vec::new(), subnet: (std::process::id() % 250) as u8 };
        ip(&["link", "add", &network.bridge, "type", "bridge"])?;
        let gateway = format!("{}/24", network.gateway());
        ip(&["addr", "add", &gateway, "dev", &network.bridge])?;
        ip(&["link", "set", &network.bridge, "up"])?;
        for host in 0..hosts {
            let netns = format!("trh{id}-{host}");
            ip(&["netns", "add", &netns])?;
            network.hosts.push(netns.clone());
            let link = format!("trv{id}-{host}");
            ip(&["link", "add", &link, "type", "veth", "peer", "name", "eth0", "netns", &netns])?;
            network.links.push(link.clone());
            ip(&["link", "set", &link, "master", &network.bridge, "up"])?;
            let address = format!("{}/24", network.address(host));
            ip(&["-n", &netns, "addr", "add", &address, "dev", "eth0"])?;
            ip(&["-n", &netns, "link", "set", "eth0", "up"])?;
            ip(&["-n", &netns, "link", "set", "lo", "up"])?;
        }
        Ok(network)
    }

    /// The address of host `host` (0-based).
    pub fn address(&self, host: usize) -> Ipv4Addr {
        Ipv4Addr::new(198, 18, self.subnet, host as u8 + 1)
    }

    /// The test's own address on the bridge.
    pub fn gateway(&self) -> Ipv4Addr {
        Ipv4Addr::new(198, 18, self.subnet, 254)
    }

    /// The namespace of host `host`, for `ip netns exec`.
    pub fn netns(&self, host: usize) -> &str {
        &self.hosts[host]
    }

    /// A command that runs `program` on host `host`.
    pub fn command(&self, host: usize, program: &std::path::Path) -> Command {
        let mut command = Command::new("ip");
        command.args(["netns", "exec", self.netns(host)]).arg(program);
        command
    }

    /// Cuts (`false`) or restores (`true`) host `host`'s link: packets are dropped silently, as when a cable or
    /// a switch port fails (no reset reaches either end).
    pub fn set_link(&self, host: usize, up: bool) {
        let state = if up { "up" } else { "down" };
        ip(&["link", "set", &self.links[host], state]).unwrap_or_else(|e| panic!("cannot set the link of host {host} {state}: {e}"));
    }
}

impl Drop for Network {
    fn drop(&mut self) {
        // Deleting a namespace deletes its veth end, and with it the peer on the bridge.
        for netns in &self.hosts {
            let _ = ip(&["netns", "del", netns]);
        }
        let _ = ip(&["link", "del", &self.bridge]);
    }
}
