//! rustls under tokio-postgres: the client configuration a target's TLS
//! settings call for (libpq's verification levels), and the
//! `MakeTlsConnect` glue that runs tokio-postgres over tokio-rustls.

use std::future::Future;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_postgres::tls::{ChannelBinding, MakeTlsConnect, TlsConnect, TlsStream};

use super::{RootCert, TlsMode, TlsSettings, Verify};

/// The client configuration for these settings; the error is one line
/// for [`crate::PgError::Connect`].
pub(super) fn client_config(settings: &TlsSettings) -> Result<ClientConfig, String> {
    // The provider the AWS SDK's rustls uses too: one crypto library.
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let verifier: Arc<dyn ServerCertVerifier> = match settings.verify() {
        Verify::Nothing => Arc::new(EncryptOnly(provider.signature_verification_algorithms)),
        verify => {
            let roots = root_store(settings)?;
            let webpki = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                .build()
                .map_err(|e| format!("cannot use the CA certificates: {e}"))?;
            if verify == Verify::Chain { Arc::new(ChainOnly(webpki)) } else { webpki }
        }
    };
    let builder = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS setup failed: {e}"))?
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    match (&settings.cert, &settings.key) {
        (Some(cert), Some(key)) => {
            let chain = CertificateDer::pem_file_iter(cert)
                .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
                .map_err(|e| format!("cannot read the client certificate sslcert={}: {e}", cert.display()))?;
            if chain.is_empty() {
                return Err(format!("sslcert={} holds no PEM certificate", cert.display()));
            }
            let key_der = client_key(key, cert)?;
            builder.with_client_auth_cert(chain, key_der).map_err(|e| match e {
                rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch) => format!(
                    "sslkey={} is not the private key of the certificate in sslcert={}; give the key the certificate was issued for",
                    key.display(),
                    cert.display()
                ),
                e => format!("cannot use the client certificate sslcert={}: {e}", cert.display()),
            })
        }
        _ => Ok(builder.with_no_client_auth()),
    }
}

/// Reads the client's private key, refusing it as libpq does when other
/// users could read it: the client tools would fail on it later, after
/// cairn's own connections had already started the work.
fn client_key(key: &Path, cert: &Path) -> Result<PrivateKeyDer<'static>, String> {
    let meta = std::fs::metadata(key).map_err(|e| {
        format!(
            "cannot read the client key sslkey={}: {e}; point sslkey at the private key of the certificate in sslcert={}",
            key.display(),
            cert.display()
        )
    })?;
    if !meta.is_file() {
        return Err(format!("the client key sslkey={} is not a regular file", key.display()));
    }
    if !key_is_private(meta.uid(), meta.mode()) {
        return Err(format!(
            "the client key sslkey={} is open to other users (mode {:04o}); the client tools refuse it too: run `chmod 600 {}`",
            key.display(),
            meta.mode() & 0o7777,
            key.display()
        ));
    }
    PrivateKeyDer::from_pem_file(key).map_err(|e| {
        format!(
            "cannot read the client key sslkey={}: {e} (expected an unencrypted PEM private key)",
            key.display()
        )
    })
}

/// libpq's rule: a key owned by root may be group-readable (a shared key
/// handed out through group membership), any other owner's key must be
/// private to its owner.
fn key_is_private(owner: u32, mode: u32) -> bool {
    let forbidden = if owner == 0 { 0o037 } else { 0o077 };
    mode & forbidden == 0
}

fn root_store(settings: &TlsSettings) -> Result<RootCertStore, String> {
    let mode = settings.mode.as_str();
    let mut roots = RootCertStore::empty();
    match settings.root_cert() {
        Some(RootCert::File(path)) => {
            let certs = std::fs::read(&path)
                .map_err(|e| {
                    format!(
                        "cannot read sslrootcert {}: {e}; point sslrootcert at a PEM file of the CA certificates that signed the server's certificate",
                        path.display()
                    )
                })
                .and_then(|pem| {
                    CertificateDer::pem_slice_iter(&pem)
                        .collect::<Result<Vec<_>, _>>()
                        .map_err(|e| format!("sslrootcert {} is not a PEM certificate bundle: {e}", path.display()))
                })?;
            let (added, _) = roots.add_parsable_certificates(certs);
            if added == 0 {
                return Err(format!("sslrootcert {} holds no usable CA certificate", path.display()));
            }
        }
        Some(RootCert::System) => {
            let found = rustls_native_certs::load_native_certs();
            let (added, _) = roots.add_parsable_certificates(found.certs);
            if added == 0 {
                let why = found.errors.first().map(|e| format!(": {e}")).unwrap_or_default();
                return Err(format!(
                    "sslrootcert=system, but no trusted CA certificates were found on this machine{why}; install the ca-certificates package or give sslrootcert=PATH"
                ));
            }
        }
        None if settings.mode == TlsMode::Require => {}
        None => {
            return Err(format!(
                "sslmode={mode} checks the server's certificate, but no CA certificates are given: add sslrootcert=PATH (a PEM bundle) or sslrootcert=system, or use sslmode=require to encrypt without verifying"
            ));
        }
    }
    Ok(roots)
}

/// No certificate checks (libpq's `prefer` and plain `require`); the
/// handshake signatures are still verified, so the session key is the
/// one the presented certificate holds.
#[derive(Debug)]
struct EncryptOnly(WebPkiSupportedAlgorithms);

impl ServerCertVerifier for EncryptOnly {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_schemes()
    }
}

/// `verify-ca`: the chain must lead to a trusted CA, the name may be any.
/// webpki checks the chain before the name, so a name error means the
/// chain is good.
#[derive(Debug)]
struct ChainOnly(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self.0.verify_server_cert(end_entity, intermediates, server_name, ocsp, now) {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

/// tokio-postgres' TLS hook, backed by tokio-rustls.
#[derive(Clone)]
pub(crate) struct RustlsConnect(pub(crate) Arc<ClientConfig>);

impl<S> MakeTlsConnect<S> for RustlsConnect
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = RustlsStream<S>;
    type TlsConnect = RustlsConnectOne;
    type Error = rustls::pki_types::InvalidDnsNameError;

    fn make_tls_connect(&mut self, domain: &str) -> Result<RustlsConnectOne, Self::Error> {
        // tokio-postgres asks even when there is no host name (hostaddr
        // only); it then refuses the handshake itself, so any name does.
        let domain = if domain.is_empty() { "localhost" } else { domain };
        let name = ServerName::try_from(domain.to_string())?;
        Ok(RustlsConnectOne { config: self.0.clone(), name })
    }
}

pub(crate) struct RustlsConnectOne {
    config: Arc<ClientConfig>,
    name: ServerName<'static>,
}

impl<S> TlsConnect<S> for RustlsConnectOne
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = RustlsStream<S>;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<RustlsStream<S>>> + Send>>;

    fn connect(self, stream: S) -> Self::Future {
        Box::pin(async move {
            let connector = tokio_rustls::TlsConnector::from(self.config);
            connector.connect(self.name, stream).await.map(RustlsStream)
        })
    }
}

pub(crate) struct RustlsStream<S>(tokio_rustls::client::TlsStream<S>);

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for RustlsStream<S> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_read(cx, buf)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for RustlsStream<S> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().0).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_shutdown(cx)
    }
}

impl<S> RustlsStream<S> {
    /// The `tls-server-end-point` channel binding data for this connection's
    /// server certificate (see [`server_end_point`]).
    pub(crate) fn server_end_point(&self) -> Option<Vec<u8>> {
        let (_, connection) = self.0.get_ref();
        server_end_point(connection.peer_certificates()?.first()?)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> TlsStream for RustlsStream<S> {
    /// SCRAM-SHA-256-PLUS binds the login to this TLS session when the
    /// server offers it (libpq's `channel_binding=prefer`), so a
    /// man in the middle holding another certificate cannot relay it.
    fn channel_binding(&self) -> ChannelBinding {
        match self.server_end_point() {
            Some(hash) => ChannelBinding::tls_server_end_point(hash),
            None => ChannelBinding::none(),
        }
    }
}

/// RFC 5929's `tls-server-end-point`: the server certificate hashed with
/// its signature's hash function (SHA-256 in place of MD5 and SHA-1). None
/// for signatures whose hash is not in the algorithm's name (RSA-PSS,
/// Ed25519), for which PostgreSQL offers no binding either; SCRAM then goes
/// without, as it would with libpq's default.
pub(crate) fn server_end_point(certificate: &[u8]) -> Option<Vec<u8>> {
    use sha2::Digest;
    const RSA: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01];
    const ECDSA_SHA2: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03];
    const ECDSA_SHA1: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x01];
    let oid = signature_algorithm(certificate)?;
    let hash = match oid.split_last()? {
        // md5WithRSA, sha1WithRSA; ecdsa-with-SHA1
        (4 | 5, prefix) if prefix == RSA => 256,
        _ if oid == ECDSA_SHA1 => 256,
        (11, prefix) if prefix == RSA => 256,
        (12, prefix) if prefix == RSA => 384,
        (13, prefix) if prefix == RSA => 512,
        (14, prefix) if prefix == RSA => 224,
        (1, prefix) if prefix == ECDSA_SHA2 => 224,
        (2, prefix) if prefix == ECDSA_SHA2 => 256,
        (3, prefix) if prefix == ECDSA_SHA2 => 384,
        (4, prefix) if prefix == ECDSA_SHA2 => 512,
        _ => return None,
    };
    Some(match hash {
        224 => sha2::Sha224::digest(certificate).to_vec(),
        256 => sha2::Sha256::digest(certificate).to_vec(),
        384 => sha2::Sha384::digest(certificate).to_vec(),
        _ => sha2::Sha512::digest(certificate).to_vec(),
    })
}

/// The signature algorithm's OID of a DER certificate: `Certificate ::=
/// SEQUENCE { tbsCertificate, signatureAlgorithm SEQUENCE { OID, … }, … }`.
fn signature_algorithm(certificate: &[u8]) -> Option<&[u8]> {
    let (0x30, certificate, _) = der_element(certificate)? else { return None };
    let (_, _, after_tbs) = der_element(certificate)?;
    let (0x30, algorithm, _) = der_element(after_tbs)? else { return None };
    let (0x06, oid, _) = der_element(algorithm)? else { return None };
    Some(oid)
}

/// One DER element: (tag, contents, what follows it).
fn der_element(data: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let tag = *data.first()?;
    let first = *data.get(1)?;
    let (length, header) = if first < 0x80 {
        (first as usize, 2)
    } else {
        let count = (first & 0x7f) as usize;
        if count == 0 || count > 4 {
            return None;
        }
        let bytes = data.get(2..2 + count)?;
        (bytes.iter().fold(0usize, |acc, b| (acc << 8) | usize::from(*b)), 2 + count)
    };
    let contents = data.get(header..header.checked_add(length)?)?;
    Some((tag, contents, &data[header + length..]))
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    /// A certificate's outer shape: SEQUENCE { tbs SEQUENCE, algorithm SEQUENCE { OID }, BIT STRING }.
    fn certificate_signed_with(oid: &[u8]) -> Vec<u8> {
        let mut tbs = vec![0x30, 0x81, 130];
        tbs.extend([0x55; 130]); // a long-form length, as real ones have
        let mut algorithm = vec![0x30, oid.len() as u8 + 2, 0x06, oid.len() as u8];
        algorithm.extend_from_slice(oid);
        let signature = [0x03, 0x03, 0x00, 0xab, 0xcd];
        let body: Vec<u8> = [&tbs[..], &algorithm, &signature].concat();
        let mut certificate = vec![0x30, 0x81, body.len() as u8];
        certificate.extend(body);
        certificate
    }

    #[test]
    fn channel_binding_hashes_follow_the_signature_algorithm() {
        use sha2::Digest;
        let ecdsa_sha256 = certificate_signed_with(&[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x02]);
        assert_eq!(server_end_point(&ecdsa_sha256).unwrap(), sha2::Sha256::digest(&ecdsa_sha256).to_vec());
        let rsa_sha384 = certificate_signed_with(&[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0c]);
        assert_eq!(server_end_point(&rsa_sha384).unwrap(), sha2::Sha384::digest(&rsa_sha384).to_vec());
        // SHA-1 signatures bind with SHA-256 (RFC 5929).
        let rsa_sha1 = certificate_signed_with(&[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x05]);
        assert_eq!(server_end_point(&rsa_sha1).unwrap(), sha2::Sha256::digest(&rsa_sha1).to_vec());
        // Ed25519 names no hash: no binding.
        assert_eq!(server_end_point(&certificate_signed_with(&[0x2b, 0x65, 0x70])), None);
        assert_eq!(server_end_point(b"\x30\x05\x30"), None, "truncated input is not a certificate");
        assert_eq!(server_end_point(&[]), None);
    }

    #[test]
    fn client_keys_must_be_private_as_libpq_demands() {
        assert!(key_is_private(1000, 0o100600));
        assert!(key_is_private(1000, 0o100400));
        assert!(!key_is_private(1000, 0o100640));
        assert!(!key_is_private(1000, 0o100604));
        // Root-owned keys may be shared with a group, read-only.
        assert!(key_is_private(0, 0o100640));
        assert!(!key_is_private(0, 0o100660));
        assert!(!key_is_private(0, 0o100644));

        let dir = tempfile::tempdir().unwrap();
        let (key, cert) = (dir.path().join("client.key"), dir.path().join("client.pem"));
        let e = client_key(&key, &cert).unwrap_err();
        assert!(e.contains("cannot read the client key sslkey=") && e.contains("sslcert="), "{e}");
        std::fs::write(&key, "not a key\n").unwrap();
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = client_key(&key, &cert).unwrap_err();
        assert!(e.contains("open to other users (mode 0644)") && e.contains("chmod 600"), "{e}");
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
        let e = client_key(&key, &cert).unwrap_err();
        assert!(e.contains("expected an unencrypted PEM private key"), "{e}");
    }
}
