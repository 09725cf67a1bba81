//! API keys: `Authorization: Bearer <key>`, compared in constant time, never logged.

use axum::http::HeaderMap;
use axum::http::header::AUTHORIZATION;
use subtle::ConstantTimeEq;

use crate::error::ApiError;

/// Who a request comes from, for rate limits: the index of the key it presented.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Caller {
    Anonymous,
    Key(usize),
    /// This process itself (the batch runner).
    Internal,
}

/// Marks a request made inside the process (an extension, which no client can set).
#[derive(Debug, Clone, Copy)]
pub struct Internal;

pub struct ApiKeys {
    keys: Vec<Vec<u8>>,
}

impl ApiKeys {
    pub fn new(keys: impl IntoIterator<Item = String>) -> Self {
        Self { keys: keys.into_iter().map(|k| k.trim().as_bytes().to_vec()).filter(|k| !k.is_empty()).collect() }
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Checks the request's bearer token; with no keys configured everyone is let in.
    pub fn check(&self, headers: &HeaderMap) -> Result<Caller, ApiError> {
        if self.keys.is_empty() {
            return Ok(Caller::Anonymous);
        }
        let header = headers.get(AUTHORIZATION).ok_or(ApiError::MissingKey)?;
        let token = header
            .to_str()
            .ok()
            .and_then(|h| h.strip_prefix("Bearer ").or_else(|| h.strip_prefix("bearer ")))
            .map(str::trim)
            .ok_or(ApiError::MissingKey)?;
        // Every key is compared, so timing says nothing about which one (or how much) matched.
        let mut found = None;
        for (i, key) in self.keys.iter().enumerate() {
            if bool::from(key.as_slice().ct_eq(token.as_bytes())) {
                found = Some(i);
            }
        }
        found.map(Caller::Key).ok_or(ApiError::WrongKey)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(auth: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(AUTHORIZATION, auth.parse().expect("should succeed"));
        h
    }

    #[test]
    fn bearer_keys() {
        let keys = ApiKeys::new(["alpha".to_string(), " beta ".to_string()]);
        assert_eq!(keys.check(&headers("Bearer beta")), Ok(Caller::Key(1)));
        assert_eq!(keys.check(&headers("Bearer gamma")), Err(ApiError::WrongKey));
        assert_eq!(keys.check(&headers("Basic alpha")), Err(ApiError::MissingKey));
        assert_eq!(keys.check(&HeaderMap::new()), Err(ApiError::MissingKey));
        assert_eq!(ApiKeys::new(Vec::new()).check(&HeaderMap::new()), Ok(Caller::Anonymous));
    }
}
