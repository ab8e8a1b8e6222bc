//! Why a scheduler hung up on us right after a TLS handshake: one probe handshake of our own.
//!
//! In TLS 1.3 the client's side of the handshake is over before the server has judged the
//! client's certificate. When the server refuses it, its alert reaches tonic as the connection
//! closing under the first call, usually without the alert's text ("operation was canceled").
//! So when a call over TLS breaks that way, `refusal` makes one handshake with the same
//! credentials, speaks the first bytes of HTTP/2, and reads the answer: a refused certificate
//! shows up as the server's alert (`CertificateExpired`, `UnknownCA`, ...); any bytes mean the
//! handshake was fine and the call failed for another reason.
//!
//! A diagnosis only: it runs after a failure, once, within a short deadline, and a probe that
//! cannot tell (no connection, no answer) changes nothing.

use std::sync::Arc;
use std::time::Duration;

use sov_proto::tls::{SCHEDULER_SERVER_NAME, TlsMaterial};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio_rustls::rustls::{self, ClientConfig, RootCertStore};

use crate::client::connect_reason;

/// The HTTP/2 client preface and an empty SETTINGS frame: what makes any HTTP/2 server answer.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00";

/// The reason the server at `authority` (`host:port`) refuses a handshake with `material`, if
/// that is what it does; `None` when the handshake is fine or the probe cannot tell within
/// `budget`.
pub async fn refusal(authority: &str, material: &TlsMaterial, budget: Duration) -> Option<String> {
    let config = client_config(material)?;
    let name = ServerName::try_from(SCHEDULER_SERVER_NAME).ok()?.to_owned();
    let probe = async {
        let tcp = tokio::net::TcpStream::connect(authority).await.ok()?;
        let mut tls = match tokio_rustls::TlsConnector::from(config)
            .connect(name, tcp)
            .await
        {
            Ok(tls) => tls,
            Err(e) => return Some(connect_reason(&e)),
        };
        let refused = |e: std::io::Error| {
            (e.kind() == std::io::ErrorKind::InvalidData).then(|| connect_reason(&e))
        };
        if let Err(e) = tls.write_all(H2_PREFACE).await {
            return refused(e);
        }
        let mut first = [0u8; 1];
        tls.read(&mut first).await.err().and_then(refused)
    };
    tokio::time::timeout(budget, probe).await.ok().flatten()
}

/// The same client configuration tonic builds from `material` (`TlsMaterial::client`): trust
/// the cluster CA only, present our certificate, offer HTTP/2.
fn client_config(material: &TlsMaterial) -> Option<Arc<ClientConfig>> {
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(material.ca_pem.as_bytes()) {
        roots.add(cert.ok()?).ok()?;
    }
    let chain = CertificateDer::pem_slice_iter(material.cert_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .ok()?;
    let key = PrivateKeyDer::from_pem_slice(material.key_pem.as_bytes()).ok()?;
    let mut config =
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .ok()?
            .with_root_certificates(roots)
            .with_client_auth_cert(chain, key)
            .ok()?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Some(Arc::new(config))
}
