//! Client certificates (`server.tls.client_ca`): the verdict the connection's handshake earned.
//! A valid certificate signs its user in (`auth.certificate_user`: the CN or the e-mail address),
//! whatever else the request carries; an invalid one is refused (403.13 revoked, 403.16 untrusted,
//! 403.17 expired); none is 403.7 with `client_auth = "required"`, and leaves the decision to the
//! other schemes with `"optional"`.

use crate::client_cert::ClientCert;

use super::*;

impl Gateway {
    /// `Ok(None)`: no certificate, and none is required.
    pub(super) fn certificate(&self, ex: &mut Exchange<'_>) -> Result<Option<Identity>, Refusal> {
        let Some(tls) = &self.config.server.tls else {
            return Ok(None);
        };
        if tls.client_auth == config::ClientAuth::Off {
            return Ok(None);
        }
        let refused = |reason: Reason, detail: String| {
            self.metrics.auth("certificate", AuthOutcome::Refused);
            Err(Refusal::new(reason)
                .with_action(policy::DenyAction::Forbidden)
                .with_detail(detail))
        };
        match ex.request.client_cert {
            None | Some(ClientCert::Missing) if tls.client_auth == config::ClientAuth::Required => {
                refused(
                    Reason::CertificateRequired,
                    "the connection presented no client certificate (server.tls.client_auth = \"required\")"
                        .into(),
                )
            }
            None | Some(ClientCert::Missing) => Ok(None),
            Some(ClientCert::Refused(reason, why)) => refused(*reason, why.clone()),
            Some(ClientCert::Valid { cn, email }) => {
                let name = match self.config.auth.certificate_user {
                    config::CertificateUser::Cn => cn,
                    config::CertificateUser::Email => email,
                };
                let Some(user) = name
                    .as_deref()
                    .filter(|u| !u.is_empty() && policy::check_user_name(u).is_ok())
                else {
                    return refused(
                        Reason::CertificateUntrusted,
                        format!(
                            "the client certificate has no usable {} (auth.certificate_user)",
                            match self.config.auth.certificate_user {
                                config::CertificateUser::Cn => "common name",
                                config::CertificateUser::Email => "e-mail address",
                            }
                        ),
                    );
                };
                self.metrics.auth("certificate", AuthOutcome::Accepted);
                if let Some(r) = ex.record.as_mut() {
                    r.username = Some(user.to_owned());
                }
                let mut identity = Identity::user(user);
                identity.groups = self.logon().groups_of(user);
                Ok(Some(identity))
            }
        }
    }
}
