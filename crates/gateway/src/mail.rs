//! Sending invitation and password-reset links by email (`[mail]`), through lettre's async SMTP
//! client: STARTTLS required (rustls, web PKI roots) unless `starttls = false`, AUTH when a user
//! name and password are set, a 10 s timeout. A temporary refusal (4xx) is tried again twice,
//! after 1 s and 4 s; anything else fails at once, with the server's answer.
//!
//! Each message is what strict mail systems expect (RFC 5322, 2045–2047): a `Message-ID` on the
//! sender's domain, `MIME-Version`, `Auto-Submitted: auto-generated`, and a
//! `multipart/alternative` body — a plain-text part and an HTML part (the portal's look, no
//! remote images), both UTF-8; non-ASCII names in headers are encoded words. A part is sent
//! `7bit` when it is ASCII, else `base64`: never quoted-printable, whose `=3D` and soft line
//! breaks would cut the link for a reader that does not decode them.

use std::time::Duration;

use lettre::message::header::{
    ContentTransferEncoding, ContentType, Header, HeaderName, HeaderValue,
};
use lettre::message::{Body, Mailbox, MultiPart, SinglePart};
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Certificate, Tls, TlsParameters};
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};

use crate::pages::{MailContext, Pages, plain_duration};

/// A configured mail sender.
pub struct Mailer {
    transport: AsyncSmtpTransport<Tokio1Executor>,
    from: Mailbox,
    /// `host:port`, for messages.
    endpoint: String,
    /// Waits before the second and third attempts after a temporary refusal.
    retry_after: [Duration; 2],
}

/// What a mail says.
pub struct Letter<'a> {
    /// Recipient address.
    pub to: &'a str,
    /// Subject line.
    pub subject: String,
    /// The plain-text part.
    pub text: String,
    /// The HTML part.
    pub html: String,
}

/// `Auto-Submitted: auto-generated` (RFC 3834): no vacation replies to a machine's message.
#[derive(Clone)]
struct AutoSubmitted;

impl Header for AutoSubmitted {
    fn name() -> HeaderName {
        HeaderName::new_from_ascii_str("Auto-Submitted")
    }

    fn parse(_: &str) -> Result<Self, Box<dyn std::error::Error + Send + Sync>> {
        Ok(AutoSubmitted)
    }

    fn display(&self) -> HeaderValue {
        HeaderValue::new(Self::name(), "auto-generated".to_owned())
    }
}

/// One part of the message: `7bit` when it is ASCII with lines within RFC 5322's 998 octets
/// (lettre itself would pick quoted-printable past 76, cutting the link), else `base64`.
fn part(content_type: ContentType, text: &str) -> SinglePart {
    let body = if text.is_ascii() && text.lines().all(|l| l.len() <= 998) {
        let crlf = text.lines().collect::<Vec<_>>().join("\r\n") + "\r\n";
        Body::dangerous_pre_encoded(crlf.into_bytes(), ContentTransferEncoding::SevenBit)
    } else {
        Body::new_with_encoding(text.to_owned(), ContentTransferEncoding::Base64)
            .unwrap_or_else(Body::new)
    };
    SinglePart::builder().header(content_type).body(body)
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
            retry_after: [Duration::from_secs(1), Duration::from_secs(4)],
        })
    }

    /// The message for `letter`, as it goes on the wire.
    pub fn message(&self, letter: &Letter<'_>) -> Result<Message, String> {
        let to: Mailbox = letter
            .to
            .parse()
            .map_err(|e| format!("recipient {:?}: {e}", letter.to))?;
        let id: [u8; 16] = rand::random();
        Message::builder()
            .from(self.from.clone())
            .to(to)
            .subject(letter.subject.clone())
            .message_id(Some(format!(
                "<{}@{}>",
                store::hex(&id),
                self.from.email.domain()
            )))
            .header(AutoSubmitted)
            .multipart(
                MultiPart::alternative()
                    .singlepart(part(ContentType::TEXT_PLAIN, &letter.text))
                    .singlepart(part(ContentType::TEXT_HTML, &letter.html)),
            )
            .map_err(|e| e.to_string())
    }

    /// Sends one letter; a temporary refusal (4xx) is tried again twice, after 1 s and 4 s.
    pub async fn send(&self, letter: Letter<'_>) -> Result<(), String> {
        let message = self.message(&letter)?;
        let mut waits = self.retry_after.iter();
        loop {
            match self.transport.send(message.clone()).await {
                Ok(_) => return Ok(()),
                Err(e) if e.is_transient() => match waits.next() {
                    Some(wait) => {
                        tracing::warn!(error = %e, server = %self.endpoint, retry_in = ?wait, "mail refused for now; trying again");
                        tokio::time::sleep(*wait).await;
                    }
                    None => {
                        return Err(format!(
                            "SMTP server {}: {e} (tried {} times)",
                            self.endpoint,
                            self.retry_after.len() + 1
                        ));
                    }
                },
                Err(e) => return Err(format!("SMTP server {}: {e}", self.endpoint)),
            }
        }
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

/// An invitation or reset mail, from the mail templates (`mail.txt`, `mail.html`).
pub fn link_letter<'a>(
    pages: &Pages,
    to: &'a str,
    user: &str,
    realm: &str,
    link: &str,
    invite: bool,
    valid_for: Duration,
) -> Result<Letter<'a>, String> {
    let subject = if invite {
        format!("Your new account on {realm}: choose a password")
    } else {
        format!("Choose a new password for {realm}")
    };
    let (text, html) = pages.render_mail(&MailContext {
        invite,
        user,
        realm,
        link,
        valid_for: plain_duration(valid_for),
        subject: &subject,
    })?;
    Ok(Letter {
        to,
        subject,
        text,
        html,
    })
}
