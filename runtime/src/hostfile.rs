//! Host files: one `host:port` per line, in process order, parsed into a validated [`HostFile`].
//!
//! Blank lines and `#` comments (whole-line or trailing) are allowed. Every address must resolve to a socket
//! address and appear once. Errors name the file and the 1-based line.

use std::collections::HashMap;
use std::fmt;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// One process's entry in a host file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Host {
    /// The address as written in the file (`host:port`), used to bind and to connect.
    pub address: String,
    /// What the address resolved to when the file was read.
    pub resolved: SocketAddr,
    /// The 1-based line of the file it came from.
    pub line: usize,
}

impl fmt::Display for Host {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.address)
    }
}

/// A parsed host file: process `i` listens on `hosts[i]`.
///
/// ```
/// use tributary_runtime::HostFile;
/// let hosts = HostFile::parse("hosts.txt".as_ref(), "# the cluster\n127.0.0.1:4000\n127.0.0.1:4001  # second\n")?;
/// assert_eq!(hosts.len(), 2);
/// assert_eq!(hosts.hosts()[1].address, "127.0.0.1:4001");
/// # Ok::<(), tributary_runtime::Error>(())
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostFile {
    path: PathBuf,
    hosts: Vec<Host>,
}

impl HostFile {
    /// Reads and validates the host file at `path`.
    pub fn read(path: &Path) -> Result<HostFile> {
        let text = std::fs::read_to_string(path).map_err(|source| Error::HostFileRead { path: path.to_owned(), source })?;
        HostFile::parse(path, &text)
    }

    /// Validates host-file `text`; `path` names the file in errors.
    pub fn parse(path: &Path, text: &str) -> Result<HostFile> {
        let line_error = |line: usize, message: String| Error::HostFileLine { path: path.to_owned(), line, message };
        let mut hosts: Vec<Host> = Vec::new();
        let mut seen: HashMap<SocketAddr, usize> = HashMap::new();
        for (index, raw) in text.lines().enumerate() {
            let line = index + 1;
            let content = raw.split('#').next().unwrap_or("").trim();
            if content.is_empty() {
                continue;
            }
            if content.split_whitespace().count() > 1 {
                return Err(line_error(line, format!("`{content}` holds more than one address; write one `host:port` per line")));
            }
            let resolved =
                resolve(content).map_err(|why| line_error(line, format!("`{content}` is not a usable host:port address: {why}")))?;
            if let Some(first) = seen.insert(resolved, line) {
                return Err(line_error(
                    line,
                    format!("`{content}` repeats the address of line {first} ({resolved}); every process needs its own port"),
                ));
            }
            hosts.push(Host { address: content.to_owned(), resolved, line });
        }
        if hosts.is_empty() {
            return Err(Error::HostFileLayout {
                path: path.to_owned(),
                message: "lists no hosts; write one `host:port` per process".into(),
            });
        }
        Ok(HostFile { path: path.to_owned(), hosts })
    }

    /// Writes a host file for `addresses` at `path` (used by the launcher).
    pub fn write(path: &Path, addresses: &[SocketAddr]) -> Result<HostFile> {
        let mut text = String::from("# written by `tributary launch`: one host:port per process, in process order\n");
        for address in addresses {
            text.push_str(&address.to_string());
            text.push('\n');
        }
        std::fs::write(path, &text).map_err(|source| Error::Io { what: format!("cannot write host file {}", path.display()), source })?;
        HostFile::parse(path, &text)
    }

    /// Checks that the file lists exactly `processes` hosts and that `process` is one of them.
    pub fn check_layout(&self, processes: usize, process: usize) -> Result<()> {
        let lines = self.hosts.iter().map(|h| h.line.to_string()).collect::<Vec<_>>().join(", ");
        if self.hosts.len() != processes {
            return Err(Error::HostFileLayout {
                path: self.path.clone(),
                message: format!(
                    "--processes is {processes} but the file lists {} host(s) (on lines {lines}); write one line per process",
                    self.hosts.len()
                ),
            });
        }
        if process >= processes {
            return Err(Error::HostFileLayout {
                path: self.path.clone(),
                message: format!("--process is {process} but the file lists processes 0 to {}", processes - 1),
            });
        }
        Ok(())
    }

    /// The file this came from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The hosts, in process order.
    pub fn hosts(&self) -> &[Host] {
        &self.hosts
    }

    /// How many processes the file lists.
    pub fn len(&self) -> usize {
        self.hosts.len()
    }

    /// Whether the file lists no process (never true for a parsed file).
    pub fn is_empty(&self) -> bool {
        self.hosts.is_empty()
    }
}

fn resolve(address: &str) -> std::result::Result<SocketAddr, String> {
    if let Ok(addr) = address.parse::<SocketAddr>() {
        return Ok(addr);
    }
    let (host, port) = address.rsplit_once(':').ok_or("expected host:port")?;
    if host.is_empty() {
        return Err("the host is empty".into());
    }
    port.parse::<u16>().map_err(|_| format!("`{port}` is not a port number (0-65535)"))?;
    let mut addrs = address.to_socket_addrs().map_err(|e| format!("cannot resolve `{host}`: {e}"))?;
    addrs.next().ok_or_else(|| format!("`{host}` resolves to no address"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<HostFile> {
        HostFile::parse(Path::new("hosts"), text)
    }

    #[test]
    fn comments_blank_lines_and_hostnames() {
        let hosts = parse("\n# c\nlocalhost:4000 # a\n\n127.0.0.1:4001\n").unwrap();
        assert_eq!(hosts.len(), 2);
        assert_eq!(hosts.hosts()[0].line, 3);
        assert_eq!(hosts.hosts()[1].resolved, "127.0.0.1:4001".parse().unwrap());
    }

    #[test]
    fn errors_name_the_line() {
        let err = parse("127.0.0.1:4000\n127.0.0.1:notaport\n").unwrap_err().to_string();
        assert!(err.starts_with("hosts:2: `127.0.0.1:notaport`"), "{err}");
        let err = parse("127.0.0.1:4000\n\n127.0.0.1:4000\n").unwrap_err().to_string();
        assert!(err.starts_with("hosts:3:") && err.contains("line 1"), "{err}");
        let err = parse("justahost\n").unwrap_err().to_string();
        assert!(err.starts_with("hosts:1:"), "{err}");
        let err = parse("a:1 b:2\n").unwrap_err().to_string();
        assert!(err.contains("more than one address"), "{err}");
        assert!(parse("# nothing\n").is_err());
    }

    #[test]
    fn layout_checks() {
        let hosts = parse("127.0.0.1:4000\n127.0.0.1:4001\n").unwrap();
        assert!(hosts.check_layout(2, 1).is_ok());
        let err = hosts.check_layout(3, 0).unwrap_err().to_string();
        assert!(err.contains("--processes is 3 but the file lists 2 host(s) (on lines 1, 2)"), "{err}");
        let err = hosts.check_layout(2, 2).unwrap_err().to_string();
        assert!(err.contains("--process is 2"), "{err}");
    }
}
