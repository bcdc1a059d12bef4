//! Clients of a test's controller that trust its CA when it serves HTTPS:
//! the typed client without tokens, a plain HTTP client, the CLI's
//! arguments, and a raw connection.

use crate::ControllerProc;
use anyhow::Result;
use coalmine_client::Client;
use std::sync::Arc;

/// A byte stream to the controller ([`ControllerProc::connect`]).
pub trait RawStream: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> RawStream for T {}

impl ControllerProc {
    /// A typed API client without tokens, trusting the controller's CA
    /// when it serves HTTPS.
    pub fn bare_client(&self) -> Result<Client> {
        let mut b = Client::builder(&self.url(""));
        if let Some(ca) = self.ca_file() {
            b = b.ca_file(ca)?;
        }
        Ok(b.build()?)
    }

    /// A plain HTTP client (for what the typed client cannot send),
    /// trusting the controller's CA when it serves HTTPS.
    pub fn http(&self) -> Result<reqwest::Client> {
        let mut b = reqwest::Client::builder();
        if let Some(ca) = self.ca_file() {
            b = b.add_root_certificate(reqwest::Certificate::from_pem(&std::fs::read(ca)?)?);
        }
        Ok(b.build()?)
    }

    /// A connection to the controller to write raw HTTP on: TCP, inside
    /// TLS (trusting its CA) when it serves HTTPS.
    pub async fn connect(&self) -> Result<Box<dyn RawStream>> {
        use tokio_rustls::rustls::pki_types::pem::PemObject as _;
        use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName};
        use tokio_rustls::rustls::{ClientConfig, RootCertStore, crypto};
        let tcp = tokio::net::TcpStream::connect(self.addr).await?;
        let Some(ca) = self.ca_file() else {
            return Ok(Box::new(tcp));
        };
        let mut roots = RootCertStore::empty();
        for cert in CertificateDer::pem_file_iter(ca)? {
            roots.add(cert?)?;
        }
        let provider = Arc::new(crypto::ring::default_provider());
        let config = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth();
        let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
        let name = ServerName::try_from(crate::SERVER_NAME)?;
        Ok(Box::new(connector.connect(name, tcp).await?))
    }

    /// `--url` and, with TLS, `--ca-file`: what the `coalmine` CLI needs
    /// to reach this controller.
    pub fn cli_args(&self) -> Vec<String> {
        let mut args = vec!["--url".to_string(), self.url("")];
        if let Some(ca) = self.ca_file() {
            args.extend(["--ca-file".to_string(), ca.display().to_string()]);
        }
        args
    }
}
