//! Request ids: kept from the client when well-formed, so one id follows a request through
//! every proxy, and generated otherwise.

use http::{HeaderMap, HeaderName};

/// `X-Request-Id`.
pub const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Whether `id` may be used as a request id: 1–128 characters of `[A-Za-z0-9._:-]`.
pub fn well_formed(id: &[u8]) -> bool {
    !id.is_empty()
        && id.len() <= 128
        && id
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || b"._:-".contains(b))
}

/// The client's id if it is [`well_formed`], else a new random one.
pub fn for_request(headers: &HeaderMap) -> String {
    headers
        .get(X_REQUEST_ID)
        .map(|v| v.as_bytes())
        .filter(|v| well_formed(v))
        .map(|v| String::from_utf8_lossy(v).into_owned())
        .unwrap_or_else(|| format!("{:032x}", rand::random::<u128>()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_well_formed_ids_and_replaces_others() {
        let mut h = HeaderMap::new();
        h.insert(X_REQUEST_ID, "abc-123.x".parse().unwrap());
        assert_eq!(for_request(&h), "abc-123.x");
        h.insert(X_REQUEST_ID, "bad id<script>".parse().unwrap());
        let id = for_request(&h);
        assert_eq!(id.len(), 32);
        assert!(id.chars().all(|c| c.is_ascii_hexdigit()));
    }
}
