//! Throw-away TLS for tests: a certificate authority, a certificate for `127.0.0.1` it signs, and a proxy that
//! terminates TLS in front of a plaintext broker. tansu 0.6.0 takes `--cert` and `--key` but never serves TLS
//! (the two flags exclude each other, and the acceptor it builds is unused), so a test of a client's TLS puts
//! this proxy in front of it and has the broker advertise the proxy.

use std::io::{ErrorKind, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context;
use openssl::asn1::Asn1Time;
use openssl::bn::{BigNum, MsbOption};
use openssl::ec::{EcGroup, EcKey};
use openssl::hash::MessageDigest;
use openssl::nid::Nid;
use openssl::pkey::{PKey, Private};
use openssl::ssl::{SslAcceptor, SslFiletype, SslMethod, SslStream, SslVerifyMode};
use openssl::x509::extension::{BasicConstraints, ExtendedKeyUsage, KeyUsage, SubjectAlternativeName};
use openssl::x509::{X509, X509Name, X509NameBuilder};

/// A certificate authority and a server certificate for `127.0.0.1` and `localhost` it signed, as PEM files.
#[derive(Clone, Debug)]
pub struct Pki {
    /// The CA's certificate: what a client trusts.
    pub ca: PathBuf,
    /// The server's certificate.
    pub cert: PathBuf,
    /// The server's private key (PKCS#8).
    pub key: PathBuf,
    /// A client certificate the CA signed, for mutual TLS.
    pub client_cert: PathBuf,
    /// Its private key (PKCS#8).
    pub client_key: PathBuf,
}

fn key() -> anyhow::Result<PKey<Private>> {
    let group = EcGroup::from_curve_name(Nid::X9_62_PRIME256V1)?;
    Ok(PKey::from_ec_key(EcKey::generate(&group)?)?)
}

fn name(common_name: &str) -> anyhow::Result<X509Name> {
    let mut name = X509NameBuilder::new()?;
    name.append_entry_by_nid(Nid::COMMONNAME, common_name)?;
    Ok(name.build())
}

fn serial() -> anyhow::Result<openssl::asn1::Asn1Integer> {
    let mut serial = BigNum::new()?;
    serial.rand(64, MsbOption::MAYBE_ZERO, false)?;
    Ok(serial.to_asn1_integer()?)
}

/// A certificate builder for `subject`'s `key`, valid for two days from now, with its issuer set (`None`:
/// self-signed); the caller adds extensions and signs.
fn builder(subject: &str, key: &PKey<Private>, issuer: Option<&X509>) -> anyhow::Result<openssl::x509::X509Builder> {
    let mut builder = X509::builder()?;
    builder.set_version(2)?;
    let (serial, subject) = (serial()?, name(subject)?);
    builder.set_serial_number(&serial)?;
    builder.set_subject_name(&subject)?;
    builder.set_issuer_name(issuer.map_or(&*subject, |ca| ca.subject_name()))?;
    builder.set_pubkey(key)?;
    builder.set_not_before(&*Asn1Time::days_from_now(0)?)?;
    builder.set_not_after(&*Asn1Time::days_from_now(2)?)?;
    Ok(builder)
}

impl Pki {
    /// Writes `<prefix>ca.pem`, `<prefix>server.pem`/`.key` and `<prefix>client.pem`/`.key` into `dir`: a new
    /// CA named `ca_name` (valid for two days), a server certificate for `127.0.0.1` and a client certificate
    /// it signs.
    pub fn create(dir: &Path, prefix: &str, ca_name: &str) -> anyhow::Result<Pki> {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let ca_key = key()?;
        let mut ca = builder(ca_name, &ca_key, None)?;
        ca.append_extension(BasicConstraints::new().critical().ca().build()?)?;
        ca.append_extension(KeyUsage::new().critical().key_cert_sign().crl_sign().build()?)?;
        ca.sign(&ca_key, MessageDigest::sha256())?;
        let ca = ca.build();

        let server_key = key()?;
        let mut server = builder("127.0.0.1", &server_key, Some(&ca))?;
        let san = SubjectAlternativeName::new().ip("127.0.0.1").dns("localhost").build(&server.x509v3_context(Some(&ca), None))?;
        server.append_extension(san)?;
        server.append_extension(ExtendedKeyUsage::new().server_auth().build()?)?;
        server.sign(&ca_key, MessageDigest::sha256())?;
        let server = server.build();

        let client_key = key()?;
        let mut client = builder("tributary test client", &client_key, Some(&ca))?;
        client.append_extension(ExtendedKeyUsage::new().client_auth().build()?)?;
        client.sign(&ca_key, MessageDigest::sha256())?;
        let client = client.build();

        let pki = Pki {
            ca: dir.join(format!("{prefix}ca.pem")),
            cert: dir.join(format!("{prefix}server.pem")),
            key: dir.join(format!("{prefix}server.key")),
            client_cert: dir.join(format!("{prefix}client.pem")),
            client_key: dir.join(format!("{prefix}client.key")),
        };
        std::fs::write(&pki.ca, ca.to_pem()?).context("writing the CA certificate")?;
        std::fs::write(&pki.cert, server.to_pem()?).context("writing the server certificate")?;
        std::fs::write(&pki.key, server_key.private_key_to_pem_pkcs8()?).context("writing the server key")?;
        std::fs::write(&pki.client_cert, client.to_pem()?).context("writing the client certificate")?;
        std::fs::write(&pki.client_key, client_key.private_key_to_pem_pkcs8()?).context("writing the client key")?;
        Ok(pki)
    }
}

/// Terminates TLS on a loopback port and forwards the plaintext to a target, one thread per connection.
/// Stops accepting when dropped.
pub struct TlsProxy {
    address: SocketAddr,
    stop: Arc<AtomicBool>,
}

impl TlsProxy {
    /// Binds a free loopback port for a proxy (so its address can be advertised before it starts).
    pub fn bind() -> anyhow::Result<TcpListener> {
        TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).context("cannot bind a loopback port for the TLS proxy")
    }

    /// Serves TLS with `pki`'s server certificate on `listener`, forwarding to `target`; with
    /// `require_client_cert`, only to clients that present a certificate `pki`'s CA signed (mutual TLS).
    pub fn start(listener: TcpListener, target: SocketAddr, pki: &Pki, require_client_cert: bool) -> anyhow::Result<TlsProxy> {
        let mut acceptor = SslAcceptor::mozilla_intermediate_v5(SslMethod::tls())?;
        acceptor.set_private_key_file(&pki.key, SslFiletype::PEM)?;
        acceptor.set_certificate_chain_file(&pki.cert)?;
        acceptor.check_private_key()?;
        if require_client_cert {
            acceptor.set_ca_file(&pki.ca)?;
            acceptor.set_verify(SslVerifyMode::PEER | SslVerifyMode::FAIL_IF_NO_PEER_CERT);
        }
        let acceptor = Arc::new(acceptor.build());
        let address = listener.local_addr().context("proxy address")?;
        listener.set_nonblocking(true)?;
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = Arc::clone(&stop);
        std::thread::Builder::new().name("tls-proxy".into()).spawn(move || {
            while !stopped.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((client, _)) => {
                        let (acceptor, stopped) = (Arc::clone(&acceptor), Arc::clone(&stopped));
                        std::thread::spawn(move || {
                            let _ = client.set_nonblocking(false);
                            // A client that does not trust the certificate fails the handshake: nothing to forward.
                            let Ok(tls) = acceptor.accept(client) else { return };
                            let Ok(broker) = TcpStream::connect(target) else { return };
                            forward(tls, broker, &stopped);
                        });
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => std::thread::sleep(Duration::from_millis(5)),
                    Err(_) => return,
                }
            }
        })?;
        Ok(TlsProxy { address, stop })
    }

    /// `127.0.0.1:PORT`, for `bootstrap.servers`.
    pub fn address(&self) -> SocketAddr {
        self.address
    }
}

impl Drop for TlsProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

/// Copies both ways until either side closes; one thread, each side read with a short timeout in turn.
fn forward(mut tls: SslStream<TcpStream>, mut broker: TcpStream, stop: &AtomicBool) {
    let tick = Some(Duration::from_millis(2));
    if tls.get_ref().set_read_timeout(tick).is_err() || broker.set_read_timeout(tick).is_err() {
        return;
    }
    let mut buf = vec![0u8; 64 * 1024];
    let idle = |e: &std::io::Error| matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut);
    while !stop.load(Ordering::SeqCst) {
        match tls.read(&mut buf) {
            Ok(0) => return,
            Ok(n) => {
                if broker.write_all(&buf[..n]).is_err() {
                    return;
                }
            }
            Err(e) if idle(&e) => {}
            Err(_) => return,
        }
        match broker.read(&mut buf) {
            Ok(0) => return,
            Ok(n) => {
                if tls.write_all(&buf[..n]).is_err() {
                    return;
                }
            }
            Err(e) if idle(&e) => {}
            Err(_) => return,
        }
    }
}
