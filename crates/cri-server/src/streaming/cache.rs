//! The single-use tokens behind the URLs that Exec, Attach and PortForward return. A token
//! stands for the whole CRI request, so the streaming server trusts nothing the HTTP request
//! says but the token; it is unguessable, taken at most once, and lapses after a minute, as in
//! the kubelet's streaming library, whose clients (kubelet's proxy, crictl) expect that.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use base64::Engine;

/// How long a URL stays valid after the RPC that made it.
pub const TOKEN_TTL: Duration = Duration::from_secs(60);
/// Tokens not yet taken; more are refused with RESOURCE_EXHAUSTED rather than held.
pub const MAX_IN_FLIGHT: usize = 1000;
/// Six random bytes: eight URL-safe characters.
const TOKEN_BYTES: usize = 6;

/// What a token stands for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StreamRequest {
    Exec { container_id: String, cmd: Vec<String>, io: StdioRequest },
    Attach { container_id: String, io: StdioRequest },
    PortForward { pod_id: String, ports: Vec<u16> },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StdioRequest {
    pub stdin: bool,
    pub stdout: bool,
    pub stderr: bool,
    pub tty: bool,
}

impl StreamRequest {
    /// The path segment of its URL: a token is only good on the route of its kind.
    pub fn route(&self) -> &'static str {
        match self {
            StreamRequest::Exec { .. } => "exec",
            StreamRequest::Attach { .. } => "attach",
            StreamRequest::PortForward { .. } => "portforward",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error("maximum number of in-flight streaming requests exceeded ({MAX_IN_FLIGHT})")]
    Full,
    #[error("no randomness for a streaming token: {0}")]
    Random(String),
}

/// Tokens in insertion order, so that expired ones are dropped oldest first.
#[derive(Default)]
pub struct RequestCache {
    inner: Mutex<Entries>,
}

#[derive(Default)]
struct Entries {
    by_token: HashMap<String, (Instant, StreamRequest)>,
    order: VecDeque<(Instant, String)>,
}

impl RequestCache {
    /// Stores `request` and returns its fresh token.
    pub fn insert(&self, request: StreamRequest) -> Result<String, CacheError> {
        self.insert_at(request, Instant::now())
    }

    fn insert_at(&self, request: StreamRequest, now: Instant) -> Result<String, CacheError> {
        let mut entries = self.inner.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        entries.expire(now);
        if entries.by_token.len() >= MAX_IN_FLIGHT {
            return Err(CacheError::Full);
        }
        let token = loop {
            let token = new_token()?;
            if !entries.by_token.contains_key(&token) {
                break token;
            }
        };
        let expires = now + TOKEN_TTL;
        entries.by_token.insert(token.clone(), (expires, request));
        entries.order.push_back((expires, token.clone()));
        Ok(token)
    }

    /// Takes the request of `token`: at most once, and only before it expires.
    pub fn take(&self, token: &str) -> Option<StreamRequest> {
        self.take_at(token, Instant::now())
    }

    fn take_at(&self, token: &str, now: Instant) -> Option<StreamRequest> {
        let mut entries = self.inner.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let (expires, request) = entries.by_token.remove(token)?;
        (expires > now).then_some(request)
    }
}

impl Entries {
    fn expire(&mut self, now: Instant) {
        while let Some((expires, _)) = self.order.front() {
            if *expires > now {
                break;
            }
            if let Some((_, token)) = self.order.pop_front() {
                // A token taken already is gone from the map; one re-issued would have a later
                // expiry there.
                if self.by_token.get(&token).is_some_and(|(at, _)| *at <= now) {
                    self.by_token.remove(&token);
                }
            }
        }
        // Taken tokens leave their place in `order` behind; drop those too, so the queue
        // cannot grow past the map by more than the tokens of one TTL.
        if self.order.len() > 2 * MAX_IN_FLIGHT {
            let by_token = &self.by_token;
            self.order.retain(|(_, token)| by_token.contains_key(token));
        }
    }
}

fn new_token() -> Result<String, CacheError> {
    let mut bytes = [0u8; TOKEN_BYTES];
    getrandom::fill(&mut bytes).map_err(|err| CacheError::Random(err.to_string()))?;
    Ok(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn forward() -> StreamRequest {
        StreamRequest::PortForward { pod_id: "p".into(), ports: vec![80] }
    }

    #[test]
    fn tokens_are_eight_url_safe_characters_and_single_use() {
        let cache = RequestCache::default();
        let token = cache.insert(forward()).unwrap();
        assert_eq!(token.len(), 8);
        assert!(token.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'));
        assert_eq!(cache.take(&token), Some(forward()));
        assert_eq!(cache.take(&token), None);
        assert_eq!(cache.take("unknown!"), None);
    }

    #[test]
    fn expired_tokens_are_refused_and_swept() {
        let cache = RequestCache::default();
        let start = Instant::now();
        let token = cache.insert_at(forward(), start).unwrap();
        assert_eq!(cache.take_at(&token, start + TOKEN_TTL), None);
        for _ in 0..MAX_IN_FLIGHT {
            cache.insert_at(forward(), start).unwrap();
        }
        assert!(matches!(cache.insert_at(forward(), start), Err(CacheError::Full)));
        // A minute later the old ones are gone and there is room again.
        cache.insert_at(forward(), start + TOKEN_TTL).unwrap();
        let entries = cache.inner.lock().unwrap();
        assert_eq!(entries.by_token.len(), 1);
    }
}
