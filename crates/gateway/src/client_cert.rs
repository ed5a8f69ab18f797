//! Client certificates (`server.tls.client_ca`): the handshake asks for one and accepts any
//! (checking only that the client holds its key), and the verdict — valid and whose, missing,
//! revoked, untrusted, expired — is judged after it and travels with each request, so a refusal is
//! a page with its reason (IIS's 403.7/.13/.16/.17), not a TLS alert the person cannot read.

use std::sync::Arc;

use rustls::client::danger::HandshakeSignatureValid;
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{CertificateError, DigitallySignedStruct, DistinguishedName, SignatureScheme};

use policy::Reason;

/// What a connection's client certificate turned out to be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientCert {
    /// None was sent.
    Missing,
    /// It chains to `client_ca`, is current and not revoked: its subject's names.
    Valid {
        /// The subject's common name.
        cn: Option<String>,
        /// The e-mail address (subjectAltName, or the subject's emailAddress).
        email: Option<String>,
    },
    /// Refused, with the reason (403.13 revoked, 403.16 untrusted, 403.17 expired) and why.
    Refused(Reason, String),
}

/// The verifier of the handshake: asks for a certificate, accepts any, but checks the
/// handshake's signature (the client holds the certificate's key).
#[derive(Debug)]
pub struct AnyClientCert {
    inner: Arc<dyn ClientCertVerifier>,
}

impl AnyClientCert {
    pub fn new(inner: Arc<dyn ClientCertVerifier>) -> AnyClientCert {
        AnyClientCert { inner }
    }
}

impl ClientCertVerifier for AnyClientCert {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        false
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
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
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// The verdict on the certificates a client presented, by the real verifier (`client_ca`,
/// `crl`).
pub fn judge(
    verifier: &dyn ClientCertVerifier,
    presented: Option<&[CertificateDer<'_>]>,
) -> ClientCert {
    let Some((end_entity, intermediates)) = presented.and_then(|c| c.split_first()) else {
        return ClientCert::Missing;
    };
    match verifier.verify_client_cert(end_entity, intermediates, UnixTime::now()) {
        Ok(_) => {
            let (cn, email) = names(end_entity);
            ClientCert::Valid { cn, email }
        }
        Err(rustls::Error::InvalidCertificate(e)) => {
            let reason = match &e {
                CertificateError::Revoked => Reason::CertificateRevoked,
                CertificateError::Expired
                | CertificateError::ExpiredContext { .. }
                | CertificateError::NotValidYet
                | CertificateError::NotValidYetContext { .. } => Reason::CertificateExpired,
                _ => Reason::CertificateUntrusted,
            };
            ClientCert::Refused(reason, format!("the client certificate: {e:?}"))
        }
        Err(e) => ClientCert::Refused(
            Reason::CertificateUntrusted,
            format!("the client certificate: {e}"),
        ),
    }
}

/// The subject's CN and the e-mail address (subjectAltName rfc822Name first, else the subject's
/// emailAddress attribute).
fn names(cert: &CertificateDer<'_>) -> (Option<String>, Option<String>) {
    use x509_parser::prelude::*;
    let Ok((_, parsed)) = X509Certificate::from_der(cert.as_ref()) else {
        return (None, None);
    };
    let subject = parsed.subject();
    let cn = subject
        .iter_common_name()
        .next()
        .and_then(|a| a.as_str().ok())
        .map(str::to_owned);
    let san_email = parsed
        .subject_alternative_name()
        .ok()
        .flatten()
        .and_then(|san| {
            san.value.general_names.iter().find_map(|n| match n {
                GeneralName::RFC822Name(e) => Some((*e).to_owned()),
                _ => None,
            })
        });
    let email = san_email.or_else(|| {
        subject
            .iter_email()
            .next()
            .and_then(|a| a.as_str().ok())
            .map(str::to_owned)
    });
    (cn, email)
}
