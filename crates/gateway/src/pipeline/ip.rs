//! Phase 3: the static IP and host-name restrictions (`[ip]`): a listed address is 403.503, a
//! listed verified host name 403.504.

use super::*;

impl Gateway {
    pub(crate) async fn address_rules(&self, ex: &mut Exchange<'_>) -> Result<(), Refusal> {
        let client_ip = ex.client.ip;
        self.policy.ip.check_address(client_ip)?;
        if let Some(resolver) = &self.hosts {
            ex.client.host_name = match resolver.lookup(client_ip).await {
                HostName::Verified(name) => Some(name),
                HostName::Unverified | HostName::Failed => None,
            };
            self.policy
                .ip
                .check_host(client_ip, ex.client.host_name.as_deref())?;
        }
        Ok(())
    }
}
