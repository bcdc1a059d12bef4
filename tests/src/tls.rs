//! A certificate authority of the test's own and a server certificate it
//! signed for `localhost` and `127.0.0.1`, as PEM files: what a deployment's
//! controller serves HTTPS with, and what its clients trust.

use anyhow::Result;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, KeyUsagePurpose,
};
use std::path::{Path, PathBuf};

/// The name the server certificate carries (besides `127.0.0.1`), for a
/// client that checks names (Envoy's SNI and SAN match).
pub const SERVER_NAME: &str = "localhost";

/// PEM files in a directory of the owner's: the CA's certificate, the
/// server's certificate and its key.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl TlsFiles {
    /// The same files, copied into `dir`.
    pub fn copy_to(&self, dir: &Path) -> Result<TlsFiles> {
        let copy = |from: &Path, name: &str| -> Result<PathBuf> {
            let to = dir.join(name);
            std::fs::copy(from, &to)?;
            Ok(to)
        };
        Ok(TlsFiles {
            ca: copy(&self.ca, "ca.pem")?,
            cert: copy(&self.cert, "cert.pem")?,
            key: copy(&self.key, "key.pem")?,
        })
    }

    /// A fresh CA and a server certificate it signed, written to `dir`.
    pub fn generate(dir: &Path) -> Result<TlsFiles> {
        let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "coalmine e2e CA");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate()?)?;
        let mut params =
            CertificateParams::new(vec![SERVER_NAME.to_string(), "127.0.0.1".to_string()])?;
        params
            .distinguished_name
            .push(DnType::CommonName, "coalmine e2e controller");
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &ca)?;
        let files = TlsFiles {
            ca: dir.join("ca.pem"),
            cert: dir.join("server.pem"),
            key: dir.join("server.key"),
        };
        std::fs::write(&files.ca, ca.pem())?;
        std::fs::write(&files.cert, cert.pem())?;
        std::fs::write(&files.key, key.serialize_pem())?;
        Ok(files)
    }
}
