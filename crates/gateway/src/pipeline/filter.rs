//! Phase 7: the external filter (`[filter]`), asked about an authorized request (401.4).

use super::*;

impl Gateway {
    pub(crate) async fn external_filter(&self, ex: &mut Exchange<'_>) -> Result<(), Refusal> {
        let Some(filter) = &self.filter else {
            return Ok(());
        };
        let ask = FilterRequest {
            method: ex.request.method,
            uri: ex.request.path_and_query,
            client_ip: ex.client.ip,
            identity: ex.identity(),
            request_id: &ex.request_id,
        };
        filter.check(&ask).await.map(|_| ())
    }
}
