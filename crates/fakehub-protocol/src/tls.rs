//! Certificates made in memory with rcgen, and the tokio-rustls server configuration.
//!
//! A hub has a CA (generated, or loaded so that `fakehub certs` output stays valid across runs) and a
//! server certificate issued by it for `localhost`, `127.0.0.1`, `::1` and the hub's host name, so an
//! SDK that verifies the host name (Python checks it) accepts the connection through
//! `GatewayHostName=localhost`. TLS 1.2 and 1.3 are both offered: the Python SDK only speaks 1.2.
//!
//! Like IoT Hub, the server asks every client for a certificate but does not require one: SAS
//! devices send none, X.509 devices send theirs. The TLS layer only checks that the client holds the
//! certificate's private key (the handshake signature); whether the certificate identifies a
//! registered device is decided at CONNECT (`frontdoor::auth`), where a refusal can be answered with
//! CONNACK 5 and a 401003 record, as the hub does, instead of a failed handshake.

use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use sha1::Sha1;
use sha2::{Digest, Sha256};
use tokio_rustls::rustls::{
    self,
    client::danger::HandshakeSignatureValid,
    crypto::{CryptoProvider, WebPkiSupportedAlgorithms},
    pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, UnixTime},
    server::danger::{ClientCertVerified, ClientCertVerifier},
    server::WebPkiClientVerifier,
    DigitallySignedStruct, ServerConfig, SignatureScheme,
};

/// Errors while making or loading certificates.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("certificate generation failed: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("TLS configuration failed: {0}")]
    Config(#[from] rustls::Error),
    #[error("the CA key could not be read: {0}")]
    CaKey(String),
}

fn ring_provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The hub's CA and server certificate.
pub struct HubCertificates {
    ca: Issuer<'static, KeyPair>,
    ca_der: CertificateDer<'static>,
    ca_pem: String,
    ca_key_pem: String,
    server_chain: Vec<CertificateDer<'static>>,
    server_key: PrivatePkcs8KeyDer<'static>,
}

impl std::fmt::Debug for HubCertificates {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HubCertificates").finish_non_exhaustive()
    }
}

fn ca_params() -> CertificateParams {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, "fakehub test CA");
    dn.push(DnType::OrganizationName, "fakehub");
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params
}

/// A server certificate for `host_name`, the loopback names and `extra`, signed by `ca`.
fn issue_server(
    ca: &Issuer<'static, KeyPair>,
    host_name: &str,
    extra: &[String],
) -> Result<(CertificateDer<'static>, PrivatePkcs8KeyDer<'static>), TlsError> {
    let mut names = vec![
        "localhost".to_owned(),
        "127.0.0.1".to_owned(),
        "::1".to_owned(),
    ];
    for name in std::iter::once(host_name).chain(extra.iter().map(String::as_str)) {
        if !names.iter().any(|n| n.eq_ignore_ascii_case(name)) {
            names.push(name.to_owned());
        }
    }
    let mut params = CertificateParams::new(names)?;
    params
        .distinguished_name
        .push(DnType::CommonName, host_name.to_owned());
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
    let key = KeyPair::generate()?;
    let cert = params.signed_by(&key, ca)?;
    Ok((
        cert.der().clone(),
        PrivatePkcs8KeyDer::from(key.serialize_der()),
    ))
}

impl HubCertificates {
    /// A fresh CA and a server certificate for `host_name` and the loopback names.
    pub fn generate(host_name: &str) -> Result<Self, TlsError> {
        let key = KeyPair::generate()?;
        let ca_key_pem = key.serialize_pem();
        let params = ca_params();
        let cert = params.self_signed(&key)?;
        let ca = Issuer::new(params, key);
        Self::with_ca(ca, cert.der().clone(), cert.pem(), ca_key_pem, host_name)
    }

    /// Reuse a CA written earlier by [`Self::ca_pem`] and [`Self::ca_key_pem`] (e.g. by `fakehub
    /// certs`), and issue a fresh server certificate from it.
    pub fn from_ca_pem(ca_pem: &str, ca_key_pem: &str, host_name: &str) -> Result<Self, TlsError> {
        let key = KeyPair::from_pem(ca_key_pem).map_err(|e| TlsError::CaKey(e.to_string()))?;
        let ca_der = certificates_from_pem(ca_pem)?
            .into_iter()
            .next()
            .ok_or_else(|| TlsError::CaKey("the CA file holds no certificate".into()))?;
        let ca = Issuer::from_ca_cert_der(&ca_der, key)?;
        Self::with_ca(
            ca,
            ca_der,
            ca_pem.to_owned(),
            ca_key_pem.to_owned(),
            host_name,
        )
    }

    fn with_ca(
        ca: Issuer<'static, KeyPair>,
        ca_der: CertificateDer<'static>,
        ca_pem: String,
        ca_key_pem: String,
        host_name: &str,
    ) -> Result<Self, TlsError> {
        let (server_cert, server_key) = issue_server(&ca, host_name, &[])?;
        Ok(HubCertificates {
            server_chain: vec![server_cert, ca_der.clone()],
            server_key,
            ca,
            ca_der,
            ca_pem,
            ca_key_pem,
        })
    }

    /// Certificates for another hub of the same run: the same CA, a server certificate for
    /// `host_name`.
    pub fn sibling(&self, host_name: &str) -> Result<Self, TlsError> {
        HubCertificates::from_ca_pem(&self.ca_pem(), self.ca_key_pem(), host_name)
    }

    /// Issue a new server certificate that also names `extra` (host names or IP addresses, e.g.
    /// the loopback address a hub listens on), from the same CA.
    pub fn reissue_server(&mut self, host_name: &str, extra: &[String]) -> Result<(), TlsError> {
        let (cert, key) = issue_server(&self.ca, host_name, extra)?;
        self.server_chain = vec![cert, self.ca_der.clone()];
        self.server_key = key;
        Ok(())
    }

    /// The CA certificate devices must trust, PEM.
    pub fn ca_pem(&self) -> String {
        self.ca_pem.clone()
    }

    /// The CA certificate, DER.
    pub fn ca_der(&self) -> CertificateDer<'static> {
        self.ca_der.clone()
    }

    /// The CA private key, PEM. Only for writing a CA to disk to reuse it; never logged.
    pub fn ca_key_pem(&self) -> &str {
        &self.ca_key_pem
    }

    /// Issue a client certificate with `CN = common_name` (a device id, or `device/module`) signed by
    /// this CA, for X.509 devices registered with `X509Auth::CertificateAuthority` (in the hub's registry).
    pub fn issue_device_certificate(
        &self,
        common_name: &str,
    ) -> Result<DeviceCertificate, TlsError> {
        let key = KeyPair::generate()?;
        let cert = device_params(common_name).signed_by(&key, &self.ca)?;
        Ok(DeviceCertificate::new(cert, key))
    }

    /// The rustls server configuration: TLS 1.2 and 1.3, ring crypto, the server chain, and an
    /// optional client certificate (see the module documentation).
    pub fn server_config(&self) -> Result<Arc<ServerConfig>, TlsError> {
        let provider = ring_provider();
        let verifier = Arc::new(OptionalClientCertificate {
            algorithms: provider.signature_verification_algorithms,
        });
        let config = ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS12, &rustls::version::TLS13])?
            .with_client_cert_verifier(verifier)
            .with_single_cert(
                self.server_chain.clone(),
                PrivateKeyDer::Pkcs8(self.server_key.clone_key()),
            )?;
        Ok(Arc::new(config))
    }

    /// The rustls configuration of an HTTPS listener (the service API): a server certificate of its
    /// own from the same CA for `host_name`, the loopback names and `extra` (e.g. the address it
    /// listens on), TLS 1.2 and 1.3, no client certificates, HTTP/1.1.
    pub fn https_server_config(
        &self,
        host_name: &str,
        extra: &[String],
    ) -> Result<Arc<ServerConfig>, TlsError> {
        let (cert, key) = issue_server(&self.ca, host_name, extra)?;
        let mut config = ServerConfig::builder_with_provider(ring_provider())
            .with_protocol_versions(&[&rustls::version::TLS12, &rustls::version::TLS13])?
            .with_no_client_auth()
            .with_single_cert(vec![cert, self.ca_der.clone()], PrivateKeyDer::Pkcs8(key))?;
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Arc::new(config))
    }

    /// A client configuration that trusts this hub's CA (for Rust devices and tests).
    pub fn client_config(&self) -> Result<Arc<rustls::ClientConfig>, TlsError> {
        client_config_trusting(&[self.ca_der()])
    }
}

fn device_params(common_name: &str) -> CertificateParams {
    let mut params = CertificateParams::default();
    params
        .distinguished_name
        .push(DnType::CommonName, common_name.to_owned());
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    params
}

/// A device's client certificate and private key, with the certificate's thumbprints.
pub struct DeviceCertificate {
    /// The certificate, PEM.
    pub cert_pem: String,
    /// The private key, PEM (a secret: never log it).
    pub key_pem: String,
    /// The certificate, DER.
    pub cert_der: CertificateDer<'static>,
    /// The private key, DER (PKCS #8).
    key_der: PrivatePkcs8KeyDer<'static>,
    pub thumbprints: Thumbprints,
}

impl std::fmt::Debug for DeviceCertificate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeviceCertificate")
            .field("thumbprints", &self.thumbprints)
            .finish_non_exhaustive()
    }
}

impl DeviceCertificate {
    fn new(cert: rcgen::Certificate, key: KeyPair) -> Self {
        let cert_der = cert.der().clone();
        DeviceCertificate {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            thumbprints: Thumbprints::of(&cert_der),
            cert_der,
            key_der: PrivatePkcs8KeyDer::from(key.serialize_der()),
        }
    }

    /// A self-signed client certificate with `CN = common_name`, for devices registered with
    /// `X509Auth::SelfSigned` (in the hub's registry) (by its thumbprint).
    pub fn self_signed(common_name: &str) -> Result<Self, TlsError> {
        let key = KeyPair::generate()?;
        let cert = device_params(common_name).self_signed(&key)?;
        Ok(DeviceCertificate::new(cert, key))
    }

    /// A TLS client configuration that presents this certificate and trusts `cas`.
    pub fn client_config(
        &self,
        cas: &[CertificateDer<'static>],
    ) -> Result<Arc<rustls::ClientConfig>, TlsError> {
        let config = client_builder(cas)?.with_client_auth_cert(
            vec![self.cert_der.clone()],
            PrivateKeyDer::Pkcs8(self.key_der.clone_key()),
        )?;
        Ok(Arc::new(config))
    }
}

/// A certificate's thumbprints as IoT Hub shows them: upper-case hex of the SHA-1 and the SHA-256
/// of its DER encoding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Thumbprints {
    pub sha1: String,
    pub sha256: String,
}

fn hex_upper(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02X}")).collect()
}

impl Thumbprints {
    pub fn of(der: &[u8]) -> Self {
        Thumbprints {
            sha1: hex_upper(&Sha1::digest(der)),
            sha256: hex_upper(&Sha256::digest(der)),
        }
    }

    /// Whether a registered thumbprint (SHA-1 or SHA-256, hex in any case, `:` or space separated)
    /// names this certificate.
    pub fn matches(&self, registered: &str) -> bool {
        let clean: String = registered
            .chars()
            .filter(|c| !matches!(c, ':' | ' '))
            .collect();
        clean.eq_ignore_ascii_case(&self.sha1) || clean.eq_ignore_ascii_case(&self.sha256)
    }
}

/// Offers client authentication without requiring it, accepts any certificate chain at the TLS
/// layer, and verifies the handshake signature (so a client proves it holds the key of the
/// certificate it presents). What the certificate is worth is decided at CONNECT.
#[derive(Debug)]
struct OptionalClientCertificate {
    algorithms: WebPkiSupportedAlgorithms,
}

impl ClientCertVerifier for OptionalClientCertificate {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        false
    }

    fn root_hint_subjects(&self) -> &[rustls::DistinguishedName] {
        // No hints: a client then sends whatever certificate it has.
        &[]
    }

    fn verify_client_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// Check that `leaf` (with the `intermediates` the client sent) chains to one of `cas`, is valid
/// at `now` and is meant for client authentication. The error text is safe to log.
pub fn verify_client_chain(
    leaf: &CertificateDer<'_>,
    intermediates: &[CertificateDer<'_>],
    cas: &[CertificateDer<'static>],
    now: std::time::SystemTime,
) -> Result<(), String> {
    let mut roots = rustls::RootCertStore::empty();
    for ca in cas {
        roots
            .add(ca.clone())
            .map_err(|e| format!("a trusted CA is unusable: {e}"))?;
    }
    if roots.is_empty() {
        return Err("the hub trusts no certificate authority".to_owned());
    }
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), ring_provider())
        .build()
        .map_err(|e| e.to_string())?;
    let since_epoch = now
        .duration_since(std::time::UNIX_EPOCH)
        .map_err(|_| "the clock is before 1970".to_owned())?;
    verifier
        .verify_client_cert(leaf, intermediates, UnixTime::since_unix_epoch(since_epoch))
        .map(|_| ())
        .map_err(|e| e.to_string())
}

fn client_builder(
    cas: &[CertificateDer<'static>],
) -> Result<rustls::ConfigBuilder<rustls::ClientConfig, rustls::client::WantsClientCert>, TlsError>
{
    let mut roots = rustls::RootCertStore::empty();
    for ca in cas {
        roots.add(ca.clone())?;
    }
    Ok(rustls::ClientConfig::builder_with_provider(ring_provider())
        .with_protocol_versions(&[&rustls::version::TLS12, &rustls::version::TLS13])?
        .with_root_certificates(roots))
}

/// A TLS client configuration (TLS 1.2 and 1.3, ring) that trusts exactly the given CAs.
pub fn client_config_trusting(
    cas: &[CertificateDer<'static>],
) -> Result<Arc<rustls::ClientConfig>, TlsError> {
    Ok(Arc::new(client_builder(cas)?.with_no_client_auth()))
}

/// A TLS client configuration that trusts `cas` and presents the client certificate (chain) in
/// `cert_pem` with the private key in `key_pem` (PKCS #8, PKCS #1 or SEC1). Errors never quote the
/// key.
pub fn client_config_with_certificate(
    cas: &[CertificateDer<'static>],
    cert_pem: &str,
    key_pem: &str,
) -> Result<Arc<rustls::ClientConfig>, TlsError> {
    let (chain, key) = chain_and_key(cert_pem, key_pem, "device")?;
    Ok(Arc::new(
        client_builder(cas)?.with_client_auth_cert(chain, key)?,
    ))
}

/// A TLS server configuration with the chain in `chain_pem` and the key in `key_pem`, TLS 1.2 and
/// 1.3, ring crypto, no client certificates: the plainest acceptor (the benchmark's bare peer).
pub fn plain_server_config(chain_pem: &str, key_pem: &str) -> Result<Arc<ServerConfig>, TlsError> {
    let (chain, key) = chain_and_key(chain_pem, key_pem, "server")?;
    let config = ServerConfig::builder_with_provider(ring_provider())
        .with_protocol_versions(&[&rustls::version::TLS12, &rustls::version::TLS13])?
        .with_no_client_auth()
        .with_single_cert(chain, key)?;
    Ok(Arc::new(config))
}

/// A certificate chain and its private key (PKCS #8, PKCS #1 or SEC1) from PEM texts; `whose`
/// names the files in errors, which never quote the key.
fn chain_and_key(
    chain_pem: &str,
    key_pem: &str,
    whose: &str,
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), TlsError> {
    use rustls::pki_types::pem::PemObject;
    let chain = certificates_from_pem(chain_pem)?;
    if chain.is_empty() {
        return Err(TlsError::CaKey(format!(
            "no certificate in the {whose} certificate file"
        )));
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(|_| {
        TlsError::CaKey(format!("the {whose} key file holds no usable private key"))
    })?;
    Ok((chain, key))
}

/// Read the certificates in a PEM text.
pub fn certificates_from_pem(pem: &str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    use rustls::pki_types::pem::PemObject;
    CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::CaKey(format!("bad certificate PEM: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::client::danger::ServerCertVerifier;

    #[test]
    fn a_reloaded_ca_issues_certificates_that_chain_to_the_saved_pem() {
        let first = HubCertificates::generate("myhub.azure-devices.net").unwrap();
        let again = HubCertificates::from_ca_pem(
            &first.ca_pem(),
            first.ca_key_pem(),
            "myhub.azure-devices.net",
        )
        .unwrap();
        // Same subject and key: a verifier that trusts the first CA accepts the second's chain.
        let roots = certificates_from_pem(&first.ca_pem()).unwrap();
        let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(
            Arc::new({
                let mut r = rustls::RootCertStore::empty();
                r.add(roots[0].clone()).unwrap();
                r
            }),
            Arc::new(rustls::crypto::ring::default_provider()),
        )
        .build()
        .unwrap();
        let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
        verifier
            .verify_server_cert(
                &again.server_chain[0],
                &again.server_chain[1..],
                &name,
                &[],
                rustls::pki_types::UnixTime::now(),
            )
            .unwrap();
    }
}
