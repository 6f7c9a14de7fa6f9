//! TLS for the emulator's `amqps` and `wss` listeners (rustls with the `ring` provider).

use std::{fmt, path::Path, sync::Arc};

use rustls::{
    ServerConfig,
    pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject},
};

use crate::error::EmulatorError;

/// The certificate chain and private key the emulator's TLS listeners present.
///
/// Either loaded from PEM files (`--tls-cert`/`--tls-key`), or generated at start-up by
/// [`TlsIdentity::generate_localhost`]: a fresh self-signed CA and a `localhost` /
/// `127.0.0.1` server certificate signed by it. Clients trust the generated CA through
/// [`TlsIdentity::ca_pem`]. Nothing is ever written to disk by the emulator itself.
#[derive(Clone)]
pub struct TlsIdentity {
    chain: Vec<CertificateDer<'static>>,
    key: Arc<PrivateKeyDer<'static>>,
    ca_pem: Option<String>,
}

impl fmt::Debug for TlsIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsIdentity")
            .field("certificates", &self.chain.len())
            .field("key", &"<redacted>")
            .field("generated_ca", &self.ca_pem.is_some())
            .finish()
    }
}

fn tls_error(what: &str, e: impl fmt::Display) -> EmulatorError {
    EmulatorError::Tls {
        reason: format!("{what}: {e}"),
    }
}

impl TlsIdentity {
    /// Generates a self-signed CA and a server certificate for `localhost` and
    /// `127.0.0.1`, signed by that CA. Each call makes new keys.
    pub fn generate_localhost() -> Result<Self, EmulatorError> {
        use rcgen::{
            BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, KeyPair,
            KeyUsagePurpose,
        };
        let ca_key = KeyPair::generate().map_err(|e| tls_error("CA key", e))?;
        let mut ca = CertificateParams::new(Vec::<String>::new())
            .map_err(|e| tls_error("CA parameters", e))?;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, "servicebus-emulator test CA");
        ca.distinguished_name = dn;
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca_cert = ca
            .self_signed(&ca_key)
            .map_err(|e| tls_error("CA certificate", e))?;
        let issuer = rcgen::Issuer::new(ca, ca_key);

        let leaf_key = KeyPair::generate().map_err(|e| tls_error("server key", e))?;
        let mut leaf = CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
            .map_err(|e| tls_error("server certificate parameters", e))?;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, "localhost");
        leaf.distinguished_name = dn;
        let leaf_cert = leaf
            .signed_by(&leaf_key, &issuer)
            .map_err(|e| tls_error("server certificate", e))?;
        let key = PrivateKeyDer::try_from(leaf_key.serialize_der())
            .map_err(|e| tls_error("server key", e))?;
        Ok(Self {
            chain: vec![leaf_cert.der().clone(), ca_cert.der().clone()],
            key: Arc::new(key),
            ca_pem: Some(ca_cert.pem()),
        })
    }

    /// Loads a PEM certificate chain (server certificate first) and a PEM private key.
    pub fn from_pem(cert_chain_pem: &[u8], key_pem: &[u8]) -> Result<Self, EmulatorError> {
        let chain = CertificateDer::pem_slice_iter(cert_chain_pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| tls_error("certificate PEM", e))?;
        if chain.is_empty() {
            return Err(tls_error("certificate PEM", "no CERTIFICATE block found"));
        }
        // The error of the PEM parser never quotes key material.
        let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| tls_error("key PEM", e))?;
        let id = Self {
            chain,
            key: Arc::new(key),
            ca_pem: None,
        };
        id.server_config(&[])?;
        Ok(id)
    }

    /// Reads [`TlsIdentity::from_pem`]'s inputs from files.
    pub fn from_pem_files(cert: &Path, key: &Path) -> Result<Self, EmulatorError> {
        let read = |p: &Path| {
            std::fs::read(p).map_err(|e| EmulatorError::Tls {
                reason: format!("cannot read {}: {e}", p.display()),
            })
        };
        Self::from_pem(&read(cert)?, &read(key)?)
    }

    /// The PEM of the generated CA that signed the server certificate (what clients
    /// must trust), or `None` for an identity loaded from files.
    pub fn ca_pem(&self) -> Option<&str> {
        self.ca_pem.as_deref()
    }

    /// A rustls server configuration offering `alpn` (empty: none).
    pub(crate) fn server_config(&self, alpn: &[&[u8]]) -> Result<Arc<ServerConfig>, EmulatorError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut cfg = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| tls_error("TLS versions", e))?
            .with_no_client_auth()
            .with_single_cert(self.chain.clone(), self.key.clone_key())
            .map_err(|e| tls_error("certificate and key do not match", e))?;
        cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Ok(Arc::new(cfg))
    }
}
