//! Building a [`Gateway`] from a configuration: the policy, the user store, the state backend,
//! the upstream, the pages, the logs. A reload builds a new one and swaps it in.

use super::*;

impl Gateway {
    /// Builds the gateway: loads users, groups and pages, opens the access log. `metrics` is
    /// the process's (created once, so that counters survive reloads).
    pub fn new(
        config: Config,
        state: StateStore,
        metrics: Arc<Metrics>,
    ) -> Result<Gateway, BuildError> {
        Gateway::build(config, state, None, metrics)
    }

    /// Builds the gateway for a reloaded `config`, keeping what must survive a reload: the state
    /// store (limiter counters, bans), the access log when its target is unchanged, and the
    /// user store with its verification cache when `auth.users` and `auth.cache_ttl` are.
    pub fn rebuild(&self, config: Config, state: StateStore) -> Result<Gateway, BuildError> {
        Gateway::build(config, state, Some(self), self.metrics.clone())
    }

    pub(crate) fn build(
        config: Config,
        state: StateStore,
        previous: Option<&Gateway>,
        metrics: Arc<Metrics>,
    ) -> Result<Gateway, BuildError> {
        let (tls, client_verifier) = match config.server.tls.as_ref().map(server::load_tls) {
            Some(Ok((acceptor, judge))) => (Some(acceptor), judge),
            Some(Err(e)) => return Err(BuildError::Tls(e)),
            None => (None, None),
        };
        let connection_builder = server::connection_builder(&config);
        let source = match &config.auth.users {
            config::UserSource::Htpasswd(p) => store::verifier::UserSource::File(p.clone()),
            config::UserSource::Inline(users) => store::verifier::UserSource::Inline(users.clone()),
            config::UserSource::Sqlite(p) => store::verifier::UserSource::Sqlite(p.clone()),
            config::UserSource::Postgres(url) => store::verifier::UserSource::Postgres(url.clone()),
            config::UserSource::Ldap(url) => store::verifier::UserSource::Ldap(
                Arc::new(directory(url, &config).map_err(BuildError::Users)?),
                second_factors(&config),
            ),
        };
        // The directory's settings as they are now (the service account's password read
        // again): a changed password file is a new directory client.
        let same_directory = |p: &Gateway| match (&source, p.verifier.directory()) {
            (store::verifier::UserSource::Ldap(new, _), Some(old)) => new.config() == old.config(),
            (store::verifier::UserSource::Ldap(..), None) => false,
            _ => true,
        };
        let parallel = std::thread::available_parallelism().map_or(2, |n| n.get());
        let same_users = |p: &Gateway| {
            p.config.auth.users == config.auth.users
                && p.config.auth.cache_ttl == config.auth.cache_ttl
                && p.config.ldap == config.ldap
                && same_directory(p)
        };
        let verifier = match previous.filter(|p| same_users(p)) {
            Some(p) => p.verifier.clone(),
            None => Arc::new(
                Verifier::new(source, config.auth.cache_ttl, parallel)
                    .map_err(|e| BuildError::Users(e.to_string()))?,
            ),
        };
        let groups = match &config.auth.groups {
            Some(path) => Groups::load(path.clone())
                .map_err(|e| BuildError::Groups(format!("{}: {e}", path.display())))?,
            None => Groups::none(),
        };
        let pages =
            Arc::new(Pages::load(config.errors.pages.as_deref()).map_err(BuildError::Pages)?);
        let log = match previous.filter(|p| {
            p.config.log.access == config.log.access && p.config.log.format == config.log.format
        }) {
            Some(p) => p.log.clone(),
            None => Arc::new(
                AccessLog::open(&config.log.access, config.log.format)
                    .map_err(BuildError::AccessLog)?,
            ),
        };
        let audit = match (
            previous.filter(|p| p.config.log.audit == config.log.audit),
            &config.log.audit,
        ) {
            (Some(p), _) => p.audit.clone(),
            (None, Some(path)) => Arc::new(AuditLog::open(path).map_err(BuildError::AccessLog)?),
            (None, None) => Arc::new(AuditLog::off()),
        };
        let policy = config.policy();
        let paths = portal::Paths::new(&config.portal.prefix);
        let mailer = portal::account::mailer_for(&config).map_err(BuildError::Mail)?;
        let challenges = policy
            .auth
            .challenges(&paths.login)
            .iter()
            .filter_map(|c| HeaderValue::from_str(c).ok())
            .collect();
        let hosts = policy
            .ip
            .needs_host_name()
            .then(|| HostResolver::new(DNS_TIMEOUT));
        let filter = config.filter.clone().map(FilterClient::new);
        let upstream = config.server.upstream.as_ref().map(|u| {
            let max = config.server.upstream_max_connections.unwrap_or_else(|| {
                server::default_upstream_max_connections(
                    config
                        .server
                        .max_connections
                        .unwrap_or_else(server::default_max_connections),
                )
            });
            Upstream::new(
                u,
                config.server.connect_timeout,
                config.server.upstream_timeout,
                max,
            )
        });
        let limits = Limits {
            max_concurrent: config.dynamic.max_concurrent,
            rate: config.dynamic.rate.map(|(max_requests, interval)| Rate {
                max_requests,
                interval,
            }),
        };
        let regulation = Regulation {
            max_failures: config.logon.max_failures,
            find_time: config.logon.find_time,
            ban_time: config.logon.ban_time,
        };
        metrics.attach_access_log(&log);
        metrics.attach_audit_log(&audit);
        metrics.attach_directory(verifier.directory());
        let suspects = match previous {
            Some(p) => p.suspects.clone(),
            None => moka::sync::Cache::builder()
                .max_capacity(100_000)
                .time_to_live(config.logon.find_time.max(Duration::from_secs(60)))
                .build(),
        };
        let known_users = match previous {
            Some(p) => p.known_users.clone(),
            None => moka::sync::Cache::builder()
                .max_capacity(100_000)
                .time_to_live(KNOWN_CLIENT_MEMORY.max(config.logon.ban_time))
                .build(),
        };
        let digest = match &config.auth.digest {
            Some(d) if config.auth.schemes.contains(&policy::Scheme::Digest) => Some(
                pipeline::authenticate::DigestSite::new(d.clone(), &config, &state)
                    .map_err(|e| BuildError::Users(format!("auth.digest: {e}")))?,
            ),
            _ => None,
        };
        let jwt = match &config.auth.jwt {
            Some(j) if config.auth.schemes.contains(&policy::Scheme::Bearer) => Some(
                pipeline::authenticate::JwtSite::new(j.clone())
                    .map_err(|e| BuildError::Users(format!("auth.jwt: {e}")))?,
            ),
            _ => None,
        };
        let oidc = match (&config.oidc, &config.portal.public_url) {
            (Some(o), Some(public_url)) if config.auth.schemes.contains(&policy::Scheme::Oidc) => {
                Some(Arc::new(
                    crate::oidc::OidcSite::new(
                        o.clone(),
                        public_url,
                        &config.portal.prefix,
                        &state.secret(),
                    )
                    .map_err(BuildError::Users)?,
                ))
            }
            _ => None,
        };
        Ok(Gateway {
            oidc,
            client_verifier,
            jwt,
            digest,
            suspects,
            known_users,
            metrics,
            config,
            policy,
            challenges,
            verifier,
            groups,
            hosts,
            filter,
            upstream,
            pages,
            log,
            limits,
            regulation,
            state,
            tls,
            audit,
            connection_builder,
            paths,
            mailer,
        })
    }
}

/// The directory client for `auth.users = url` and `[ldap]` (the service account's password read
/// from its file now: a reload reads it again).
pub fn directory(url: &str, config: &Config) -> Result<store::ldap::Directory, String> {
    let ldap = config
        .ldap
        .as_ref()
        .ok_or("auth.users is a directory but [ldap] is missing")?;
    let bind_password = match &ldap.bind_password_file {
        Some(path) => std::fs::read_to_string(path)
            .map_err(|e| {
                format!(
                    "ldap.bind_password_file: cannot read {}: {e}",
                    path.display()
                )
            })?
            .lines()
            .next()
            .unwrap_or_default()
            .to_owned(),
        None => String::new(),
    };
    let directory = store::ldap::DirectoryConfig {
        url: url.to_owned(),
        bind_dn: ldap.bind_dn.clone().unwrap_or_default(),
        bind_password,
        base_dn: ldap.base_dn.clone(),
        user_filter: ldap.user_filter.clone(),
        groups: match &ldap.group_filter {
            Some(f) => store::ldap::GroupLookup::Search(f.clone()),
            None => store::ldap::GroupLookup::MemberOf,
        },
        group_name_attribute: ldap.group_name_attribute.clone(),
        email_attribute: ldap.email_attribute.clone(),
        name_attribute: ldap.name_attribute.clone(),
        starttls: ldap.starttls,
        ca: ldap.ca.clone(),
        timeout: ldap.timeout,
        pool: usize::try_from(ldap.pool).unwrap_or(10),
    };
    store::ldap::Directory::new(directory, config.auth.cache_ttl)
        .map_err(|e| format!("[ldap]: {e}"))
}

/// The user database `auth.users` names (SQLite or PostgreSQL), if it is one.
#[must_use]
pub fn user_database(config: &Config) -> Option<store::sqlite::Location> {
    match &config.auth.users {
        config::UserSource::Sqlite(p) => Some(store::sqlite::Location::Sqlite(p.clone())),
        config::UserSource::Postgres(url) => Some(store::sqlite::Location::Postgres(url.clone())),
        _ => None,
    }
}

/// Where the second factors of directory users are kept (`ldap.second_factors`), if anywhere.
#[must_use]
pub fn second_factors(config: &Config) -> Option<store::sqlite::Location> {
    match config.ldap.as_ref()?.second_factors.as_ref()? {
        config::UserSource::Sqlite(p) => Some(store::sqlite::Location::Sqlite(p.clone())),
        config::UserSource::Postgres(url) => Some(store::sqlite::Location::Postgres(url.clone())),
        _ => None,
    }
}
