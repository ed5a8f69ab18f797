//! How to reach a Redis node beyond its URL: a private CA and a client certificate for TLS
//! (`state.ca`, `state.cert`, `state.key`), and credentials read from a file
//! (`state.password_file`) rather than written in the URL. Never printed.

use std::fmt;

use redis::{Client, ConnectionAddr, IntoConnectionInfo, RedisResult};

/// TLS material and credentials for every Redis connection (data nodes and, for TLS, the
/// Sentinels; credentials are for data nodes only).
#[derive(Clone, Default)]
pub struct RedisAccess {
    /// CA certificates (PEM) trusted instead of the system's.
    pub ca: Option<Vec<u8>>,
    /// Client certificate and private key (PEM), presented when the server asks.
    pub client_cert: Option<(Vec<u8>, Vec<u8>)>,
    /// `(user, password)` from `state.password_file` (user `None`: the `default` user).
    pub credentials: Option<(Option<String>, String)>,
}

impl fmt::Debug for RedisAccess {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisAccess")
            .field("ca", &self.ca.is_some())
            .field("client_cert", &self.client_cert.is_some())
            .field(
                "user",
                &self.credentials.as_ref().and_then(|(u, _)| u.as_deref()),
            )
            .field("password", &self.credentials.as_ref().map(|_| "****"))
            .finish()
    }
}

impl RedisAccess {
    /// Reads a password file: its first line is `PASSWORD` or `USER:PASSWORD` (an ACL user).
    pub fn credentials_from(text: &str) -> Result<(Option<String>, String), String> {
        let line = text.lines().next().unwrap_or("").trim_end_matches('\r');
        if line.is_empty() {
            return Err("the first line is empty (write PASSWORD or USER:PASSWORD)".into());
        }
        Ok(match line.split_once(':') {
            Some((user, password)) if !user.is_empty() => {
                (Some(user.to_owned()), password.to_owned())
            }
            Some((_, password)) => (None, password.to_owned()),
            None => (None, line.to_owned()),
        })
    }

    /// A client for `url`; `data_node`: with the credentials (the Sentinels are asked without).
    pub fn client(&self, url: &str, data_node: bool) -> RedisResult<Client> {
        let mut info = url.into_connection_info()?;
        if data_node && let Some((user, password)) = &self.credentials {
            let mut settings = info.redis_settings().clone().set_password(password);
            if let Some(user) = user {
                settings = settings.set_username(user);
            }
            info = info.set_redis_settings(settings);
        }
        let tls = matches!(info.addr(), ConnectionAddr::TcpTls { .. });
        if tls && (self.ca.is_some() || self.client_cert.is_some()) {
            Client::build_with_tls(
                info,
                redis::TlsCertificates {
                    client_tls: self.client_cert.clone().map(|(client_cert, client_key)| {
                        redis::ClientTlsConfig {
                            client_cert,
                            client_key,
                        }
                    }),
                    root_cert: self.ca.clone(),
                },
            )
        } else {
            Client::open(info)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn password_files_hold_a_password_or_an_acl_user_and_password() {
        assert_eq!(
            RedisAccess::credentials_from("s3cret\n").unwrap(),
            (None, "s3cret".to_owned())
        );
        assert_eq!(
            RedisAccess::credentials_from("portcullis:p:w\r\nignored").unwrap(),
            (Some("portcullis".to_owned()), "p:w".to_owned())
        );
        assert_eq!(
            RedisAccess::credentials_from(":pw").unwrap(),
            (None, "pw".to_owned())
        );
        assert!(RedisAccess::credentials_from("\n").is_err());
        let access = RedisAccess {
            credentials: Some((Some("u".into()), "hidden".into())),
            ..RedisAccess::default()
        };
        assert!(!format!("{access:?}").contains("hidden"));
    }
}
