//! Sending invitation and password-reset links by email (`[mail]`), through lettre's async SMTP
//! client: STARTTLS required (rustls, web PKI roots) unless `starttls = false`, AUTH when a user
//! name and password are set, a 10 s timeout. Failures are logged and returned, never retried
//! in a loop: the person can ask again.

use std::time::Duration;

use lettre::message::Mailbox;
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Certificate, Tls, TlsParameters};
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};

/// A configured mail sender.
pub struct Mailer {
    transport: AsyncSmtpTransport<Tokio1Executor>,
    from: Mailbox,
    /// `host:port`, for messages.
    endpoint: String,
}

/// What a mail says.
pub struct Letter<'a> {
    /// Recipient address.
    pub to: &'a str,
    /// Subject line.
    pub subject: &'a str,
    /// Plain-text body.
    pub body: String,
}

impl Mailer {
    /// A sender for `[mail]`; fails on an unusable sender address or host.
    pub fn new(mail: &config::Mail) -> Result<Mailer, String> {
        let from: Mailbox = mail
            .from
            .parse()
            .map_err(|e| format!("mail.from {:?}: {e}", mail.from))?;
        let builder = if mail.starttls {
            let relay = AsyncSmtpTransport::<Tokio1Executor>::starttls_relay(&mail.host)
                .map_err(|e| format!("mail.host {:?}: {e}", mail.host))?;
            match &mail.ca {
                None => relay,
                Some(path) => {
                    let pem = std::fs::read(path)
                        .map_err(|e| format!("mail.ca {}: {e}", path.display()))?;
                    let mut params = TlsParameters::builder(mail.host.clone());
                    for block in split_pem(&pem) {
                        let cert = Certificate::from_pem(&block)
                            .map_err(|e| format!("mail.ca {}: {e}", path.display()))?;
                        params = params.add_root_certificate(cert);
                    }
                    let params = params
                        .build_rustls()
                        .map_err(|e| format!("mail.ca {}: {e}", path.display()))?;
                    relay.tls(Tls::Required(params))
                }
            }
        } else {
            AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(&mail.host)
        };
        let mut builder = builder
            .port(mail.port)
            .timeout(Some(Duration::from_secs(10)));
        if let Some((user, password)) = &mail.credentials {
            builder = builder.credentials(Credentials::new(user.clone(), password.clone()));
        }
        Ok(Mailer {
            transport: builder.build(),
            from,
            endpoint: format!("{}:{}", mail.host, mail.port),
        })
    }

    /// Sends one letter.
    pub async fn send(&self, letter: Letter<'_>) -> Result<(), String> {
        let to: Mailbox = letter
            .to
            .parse()
            .map_err(|e| format!("recipient {:?}: {e}", letter.to))?;
        let message = Message::builder()
            .from(self.from.clone())
            .to(to)
            .subject(letter.subject)
            .body(letter.body)
            .map_err(|e| e.to_string())?;
        self.transport
            .send(message)
            .await
            .map(|_| ())
            .map_err(|e| format!("SMTP server {}: {e}", self.endpoint))
    }
}

/// The certificates of a PEM file, one PEM block each.
fn split_pem(pem: &[u8]) -> Vec<Vec<u8>> {
    let text = String::from_utf8_lossy(pem);
    let mut out = Vec::new();
    let mut rest = text.as_ref();
    while let Some(start) = rest.find("-----BEGIN CERTIFICATE-----") {
        let end_marker = "-----END CERTIFICATE-----";
        let Some(end) = rest[start..].find(end_marker) else {
            break;
        };
        let stop = start + end + end_marker.len();
        out.push(rest.as_bytes()[start..stop].to_vec());
        rest = &rest[stop..];
    }
    out
}

/// The text of an invitation or reset mail.
pub fn link_letter<'a>(
    to: &'a str,
    user: &str,
    realm: &str,
    link: &str,
    invite: bool,
    valid_for: Duration,
) -> Letter<'a> {
    let valid = humantime::format_duration(valid_for);
    if invite {
        Letter {
            to,
            subject: "Your new account: choose a password",
            body: format!(
                "Hello {user},\n\nan account \"{user}\" was created for you on {realm}.\n\
                 Choose your password here (the link works once, for {valid}):\n\n{link}\n\n\
                 If you did not expect this, ignore this message.\n"
            ),
        }
    } else {
        Letter {
            to,
            subject: "Choose a new password",
            body: format!(
                "Hello {user},\n\nsomeone (hopefully you) asked to reset the password of \"{user}\" on {realm}.\n\
                 Choose a new password here (the link works once, for {valid}):\n\n{link}\n\n\
                 If you did not ask for this, ignore this message: your password stays as it is.\n"
            ),
        }
    }
}
