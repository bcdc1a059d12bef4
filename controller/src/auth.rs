//! The tokens the API checks (compared in constant time by
//! [`coalmine_protocol::secret`]), by name, reloadable, and the guard
//! against guessing them.
//!
//! - Operator tokens (calls that change state) and feedback tokens (data
//!   pipelines) have names: the name is the actor in events, webhooks and
//!   the access log.
//! - Sync tokens: a named one belongs to the proxy of that name (Envoy's
//!   node id), which alone may report with it; the shared `--sync-token`
//!   lets any proxy report under any name (simpler, forgeable: see the
//!   README's threat model).
//! - A tokens file (`--tokens-file`) holds several of each and is read
//!   again on SIGHUP: old and new tokens valid together while rotating.
//! - Wrong tokens are logged (never the token), counted, and limited per
//!   client address ([`AuthGuard`]).

pub use coalmine_protocol::secret::{Secret, bearer_matches};

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::IpAddr;
use std::path::Path;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

/// A token and the name it acts under.
#[derive(Clone, Debug)]
pub struct Named {
    pub name: String,
    pub secret: Secret,
}

impl Named {
    pub fn new(name: &str, token: &str) -> Named {
        Named {
            name: name.to_string(),
            secret: Secret::new(token),
        }
    }
}

/// Every token the API accepts. An empty list leaves that role unchecked
/// (`--insecure-dev`); without a feedback token only operator tokens post
/// feedback.
#[derive(Clone, Debug, Default)]
pub struct Tokens {
    pub operator: Vec<Named>,
    pub feedback: Vec<Named>,
    /// Per-proxy sync tokens: the name is the only proxy id they report as.
    pub sync: Vec<Named>,
    /// The shared sync token: any proxy id.
    pub shared_sync: Option<Secret>,
}

/// The name of the first of `tokens` the header carries. Every token is
/// compared, each in constant time, so the time taken does not say which
/// (or whether one) matched.
pub fn matching<'a>(tokens: &'a [Named], header: Option<&[u8]>) -> Option<&'a str> {
    let mut found = None;
    for t in tokens {
        if bearer_matches(&t.secret, header) && found.is_none() {
            found = Some(t.name.as_str());
        }
    }
    found
}

/// Shortest token a tokens file may hold.
pub const MIN_TOKEN_LEN: usize = 16;

impl Tokens {
    /// One token per role as the flags give them: the operator's named
    /// `operator`, the feedback token `feedback`, the sync token shared.
    pub fn single(operator: Option<&str>, sync: Option<&str>, feedback: Option<&str>) -> Tokens {
        Tokens {
            operator: operator
                .map(|t| Named::new("operator", t))
                .into_iter()
                .collect(),
            feedback: feedback
                .map(|t| Named::new("feedback", t))
                .into_iter()
                .collect(),
            sync: Vec::new(),
            shared_sync: sync.map(Secret::new),
        }
    }

    /// Adds the tokens of a tokens file (JSON: `{"operator": {"alice":
    /// "…"}, "feedback": {…}, "sync": {"<proxy node id>": "…"}}`; a name
    /// may have a list of tokens, all valid, while rotating).
    pub fn with_file(mut self, path: &Path) -> Result<Tokens, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let file: TokensFile =
            serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
        let mut seen: HashSet<String> = HashSet::new();
        for (role, entries, into) in [
            ("operator", file.operator, &mut self.operator),
            ("feedback", file.feedback, &mut self.feedback),
            ("sync", file.sync, &mut self.sync),
        ] {
            for (name, token) in entries
                .into_iter()
                .flat_map(|(name, t)| t.into_vec().into_iter().map(move |t| (name.clone(), t)))
            {
                if name.is_empty()
                    || name.len() > 256
                    || name.chars().any(|c| c.is_control() || c.is_whitespace())
                {
                    return Err(format!(
                        "{}: {role} token name {name:?} must be 1 to 256 characters without spaces",
                        path.display()
                    ));
                }
                if token.len() < MIN_TOKEN_LEN {
                    return Err(format!(
                        "{}: the {role} token {name:?} is shorter than {MIN_TOKEN_LEN} characters",
                        path.display()
                    ));
                }
                if !seen.insert(token.clone()) {
                    return Err(format!(
                        "{}: the {role} token {name:?} is given twice; every token must be different",
                        path.display()
                    ));
                }
                into.push(Named::new(&name, &token));
            }
        }
        Ok(self)
    }

    /// How many of each, for the log (never the tokens).
    pub fn summary(&self) -> String {
        let names = |t: &[Named]| {
            t.iter()
                .map(|n| n.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        };
        format!(
            "operator [{}], feedback [{}], sync [{}]{}",
            names(&self.operator),
            names(&self.feedback),
            names(&self.sync),
            if self.shared_sync.is_some() {
                " and the shared sync token"
            } else {
                ""
            }
        )
    }

    /// Whether no sync token at all is configured (sync unchecked).
    pub fn sync_open(&self) -> bool {
        self.sync.is_empty() && self.shared_sync.is_none()
    }
}

#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct TokensFile {
    #[serde(default)]
    operator: BTreeMap<String, OneOrMany>,
    #[serde(default)]
    feedback: BTreeMap<String, OneOrMany>,
    #[serde(default)]
    sync: BTreeMap<String, OneOrMany>,
}

/// A name's token, or several while rotating (old and new both valid).
#[derive(Debug, serde::Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    fn into_vec(self) -> Vec<String> {
        match self {
            OneOrMany::One(t) => vec![t],
            OneOrMany::Many(t) => t,
        }
    }
}

/// The tokens in force; replaced whole on reload, so a call sees either
/// the old set or the new one.
#[derive(Debug, Default)]
pub struct LiveTokens(RwLock<Arc<Tokens>>);

impl LiveTokens {
    pub fn new(tokens: Tokens) -> LiveTokens {
        LiveTokens(RwLock::new(Arc::new(tokens)))
    }

    pub fn get(&self) -> Arc<Tokens> {
        self.0.read().map(|t| t.clone()).unwrap_or_default()
    }

    pub fn set(&self, tokens: Tokens) {
        if let Ok(mut t) = self.0.write() {
            *t = Arc::new(tokens);
        }
    }
}

/// The client's address, as the listener accepted it.
#[derive(Clone, Copy, Debug)]
pub struct ClientAddr(pub IpAddr);

/// Wrong tokens one address may present in a window by default
/// (`--wrong-tokens-per-window`); beyond, every authenticated call from it
/// is answered 429 until the window ends.
pub const FAILURES_PER_WINDOW: u32 = 20;
pub const FAILURE_WINDOW: Duration = Duration::from_secs(10);
/// Addresses tracked at most (a flood of addresses cannot take memory).
const TRACKED: usize = 4096;

#[derive(Debug)]
struct Window {
    started: Instant,
    failures: u32,
}

/// What a wrong token leads to.
#[derive(Debug, PartialEq, Eq)]
pub enum Failure {
    /// The first of the window: log it.
    First,
    /// Counted, not logged.
    Counted,
    /// The limit is reached now: log that, once.
    LimitReached,
}

/// Counts wrong tokens per client address in fixed windows.
#[derive(Debug)]
pub struct AuthGuard {
    windows: Mutex<HashMap<IpAddr, Window>>,
    /// Wrong tokens an address may present in a window.
    limit: u32,
}

impl Default for AuthGuard {
    fn default() -> Self {
        AuthGuard::new(FAILURES_PER_WINDOW)
    }
}

impl AuthGuard {
    /// A guard letting each address present `limit` wrong tokens a window
    /// (at least one).
    pub fn new(limit: u32) -> AuthGuard {
        AuthGuard {
            windows: Mutex::default(),
            limit: limit.max(1),
        }
    }

    /// Wrong tokens an address may present in a window.
    pub fn limit(&self) -> u32 {
        self.limit
    }

    /// Whether `addr` is over its limit right now.
    pub fn limited(&self, addr: Option<IpAddr>, now: Instant) -> bool {
        let (Some(addr), Ok(windows)) = (addr, self.windows.lock()) else {
            return false;
        };
        windows.get(&addr).is_some_and(|w| {
            now.duration_since(w.started) < FAILURE_WINDOW && w.failures >= self.limit
        })
    }

    /// A wrong token from `addr`.
    pub fn failed(&self, addr: Option<IpAddr>, now: Instant) -> Failure {
        let (Some(addr), Ok(mut windows)) = (addr, self.windows.lock()) else {
            return Failure::Counted;
        };
        if windows.len() >= TRACKED && !windows.contains_key(&addr) {
            windows.retain(|_, w| now.duration_since(w.started) < FAILURE_WINDOW);
            if windows.len() >= TRACKED {
                // Full of fresh windows: forget one (not the attacker's
                // memory to grow).
                if let Some(k) = windows.keys().next().copied() {
                    windows.remove(&k);
                }
            }
        }
        let w = windows.entry(addr).or_insert(Window {
            started: now,
            failures: 0,
        });
        if now.duration_since(w.started) >= FAILURE_WINDOW {
            *w = Window {
                started: now,
                failures: 0,
            };
        }
        w.failures = w.failures.saturating_add(1);
        match w.failures {
            1 => Failure::First,
            n if n == self.limit => Failure::LimitReached,
            _ => Failure::Counted,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_token_is_compared_and_the_first_match_named() {
        let tokens = [
            Named::new("alice", "token-of-alice-123"),
            Named::new("bob", "token-of-bob-4567"),
        ];
        assert_eq!(
            matching(&tokens, Some(b"Bearer token-of-bob-4567")),
            Some("bob")
        );
        assert_eq!(
            matching(&tokens, Some(b"Bearer token-of-alice-123")),
            Some("alice")
        );
        assert_eq!(matching(&tokens, Some(b"Bearer nope")), None);
        assert_eq!(matching(&tokens, None), None);
    }

    #[test]
    fn a_tokens_file_is_checked_whole() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokens.json");
        let write = |s: &str| std::fs::write(&path, s).unwrap();
        write(
            r#"{"operator": {"alice": ["aaaaaaaaaaaaaaaa1", "aaaaaaaaaaaaaaaa4"], "bob": "bbbbbbbbbbbbbbbb2"}, "sync": {"proxy-a": "ssssssssssssssss3"}}"#,
        );
        let t = Tokens::single(None, Some("shared-sync"), None)
            .with_file(&path)
            .unwrap();
        assert_eq!(t.operator.len(), 3);
        let header = Some(&b"Bearer aaaaaaaaaaaaaaaa4"[..]);
        assert_eq!(matching(&t.operator, header), Some("alice"));
        assert_eq!(t.sync[0].name, "proxy-a");
        assert!(t.shared_sync.is_some());
        assert!(!t.summary().contains("aaaa"), "{}", t.summary());
        for (bad, why) in [
            (r#"{"operator": {"alice": "short"}}"#, "shorter than 16"),
            (
                r#"{"operator": {"a b": "aaaaaaaaaaaaaaaa1"}}"#,
                "without spaces",
            ),
            (
                r#"{"operator": {"a": "aaaaaaaaaaaaaaaa1"}, "feedback": {"b": "aaaaaaaaaaaaaaaa1"}}"#,
                "given twice",
            ),
            (r#"{"admin": {}}"#, "unknown field"),
            ("not json", "expected"),
        ] {
            write(bad);
            let e = Tokens::default().with_file(&path).unwrap_err();
            assert!(e.contains(why), "{bad}: {e}");
        }
        let e = Tokens::default()
            .with_file(&dir.path().join("missing"))
            .unwrap_err();
        assert!(e.contains("cannot read"), "{e}");
    }

    #[test]
    fn wrong_tokens_are_limited_per_address_and_window() {
        let guard = AuthGuard::default();
        let (a, b) = (
            Some(IpAddr::from([127, 0, 0, 2])),
            Some(IpAddr::from([127, 0, 0, 3])),
        );
        let t0 = Instant::now();
        assert_eq!(guard.failed(a, t0), Failure::First);
        for _ in 2..FAILURES_PER_WINDOW {
            assert_eq!(guard.failed(a, t0), Failure::Counted);
            assert!(!guard.limited(a, t0));
        }
        assert_eq!(guard.failed(a, t0), Failure::LimitReached);
        assert!(guard.limited(a, t0));
        assert!(!guard.limited(b, t0), "another address is not limited");
        assert!(!guard.limited(None, t0));
        let later = t0 + FAILURE_WINDOW;
        assert!(!guard.limited(a, later), "a new window");
        assert_eq!(guard.failed(a, later), Failure::First);
    }

    #[test]
    fn the_limit_of_wrong_tokens_is_the_one_configured() {
        let a = Some(IpAddr::from([127, 0, 0, 2]));
        let t0 = Instant::now();
        let guard = AuthGuard::new(3);
        assert_eq!(guard.failed(a, t0), Failure::First);
        assert_eq!(guard.failed(a, t0), Failure::Counted);
        assert!(!guard.limited(a, t0));
        assert_eq!(guard.failed(a, t0), Failure::LimitReached);
        assert!(guard.limited(a, t0));
        // A limit of 0 would refuse an address before its first wrong
        // token: the least is one.
        let one = AuthGuard::new(0);
        assert_eq!(one.limit(), 1);
        assert!(!one.limited(a, t0));
        assert_eq!(one.failed(a, t0), Failure::First);
        assert!(one.limited(a, t0));
    }
}
