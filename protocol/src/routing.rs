//! Which deployment a request belongs to and which role serves it.
//!
//! A role is chosen by mapping a 64-bit draw onto a point in `[0, 10 000)` and
//! sending the request to the canary when the point lies below the canary's
//! share in basis points. The draw is either uniformly random or, for sticky
//! deployments, a stable hash of the user key salted with the deployment
//! name. Because a user's point never changes, raising the share (20 % → 50 %)
//! only ever moves users from baseline to canary, never back.

use crate::secret::Secret;
use crate::split::{Bps, Role};
use xxhash_rust::xxh3::{xxh3_64, xxh3_64_with_seed};

/// Maps a uniformly distributed 64-bit value to a point in `[0, 10 000)`
/// without modulo bias worth measuring (at most 10 000 / 2^64).
pub fn point_from_draw(draw: u64) -> u16 {
    // (draw * 10 000) / 2^64 < 10 000, so the narrowing is exact.
    ((u128::from(draw) * 10_000) >> 64) as u16
}

/// The role a point in `[0, 10 000)` is served by at the given canary share.
pub fn role_at(point: u16, canary: Bps) -> Role {
    if point < canary.get() {
        Role::Canary
    } else {
        Role::Baseline
    }
}

/// The per-deployment salt for sticky hashing, so that the users who see a
/// canary of one deployment are not the same ones for every deployment.
pub fn sticky_seed(deployment: &str) -> u64 {
    xxh3_64(deployment.as_bytes())
}

/// The stable point of a user key (a header value, as raw bytes).
pub fn sticky_point(seed: u64, key: &[u8]) -> u16 {
    point_from_draw(xxh3_64_with_seed(key, seed))
}

/// The role a tester override header asks for: `canary:<secret>` or
/// `baseline:<secret>`, with the configured secret (compared in constant
/// time). Anything else, including a wrong secret, asks for nothing.
pub fn tester_role(value: &[u8], secret: &Secret) -> Option<Role> {
    let colon = value.iter().position(|&b| b == b':')?;
    let (role, presented) = (value.get(..colon)?, value.get(colon + 1..)?);
    let role = match role {
        b"canary" => Role::Canary,
        b"baseline" => Role::Baseline,
        _ => return None,
    };
    secret.matches(presented).then_some(role)
}

/// What a deployment matches on: a path prefix and optionally a host.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestMatch {
    /// Starts with `/`; compared byte for byte with the request's `:path`.
    pub path_prefix: String,
    /// Lower-case host without port; compared with `:authority` minus its port,
    /// ignoring ASCII case.
    pub host: Option<String>,
}

impl RequestMatch {
    /// Whether every request matches (prefix `/`, any host): then the
    /// request's path need not be read.
    pub fn matches_every_request(&self) -> bool {
        self.path_prefix == "/" && self.host.is_none()
    }

    pub fn matches(&self, path: &[u8], authority: Option<&[u8]>) -> bool {
        if !path.starts_with(self.path_prefix.as_bytes()) {
            return false;
        }
        match &self.host {
            None => true,
            Some(host) => {
                authority.is_some_and(|a| strip_port(a).eq_ignore_ascii_case(host.as_bytes()))
            }
        }
    }
}

/// `host:port` → `host`, `[::1]:80` → `[::1]`; anything else is unchanged.
fn strip_port(authority: &[u8]) -> &[u8] {
    if authority.first() == Some(&b'[') {
        return match authority.iter().position(|&b| b == b']') {
            Some(end) => authority.get(..=end).unwrap_or(authority),
            None => authority,
        };
    }
    match authority.iter().rposition(|&b| b == b':') {
        Some(colon) => {
            let (host, port) = authority.split_at(colon);
            let digits = port.get(1..).unwrap_or_default();
            if !digits.is_empty() && digits.iter().all(u8::is_ascii_digit) {
                host
            } else {
                authority
            }
        }
        None => authority,
    }
}

/// The index of the first matcher that accepts the request, if any.
pub fn find_match<'a>(
    matchers: impl IntoIterator<Item = &'a RequestMatch>,
    path: &[u8],
    authority: Option<&[u8]>,
) -> Option<usize> {
    matchers
        .into_iter()
        .position(|m| m.matches(path, authority))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tester_override_needs_the_secret() {
        let secret = Secret::new("0123456789abcdef");
        assert_eq!(
            tester_role(b"canary:0123456789abcdef", &secret),
            Some(Role::Canary)
        );
        assert_eq!(
            tester_role(b"baseline:0123456789abcdef", &secret),
            Some(Role::Baseline)
        );
        for refused in [
            &b"canary:0123456789abcde"[..],
            b"canary:0123456789abcdefX",
            b"canary:",
            b"canary",
            b"0123456789abcdef",
            b"Canary:0123456789abcdef",
            b"canary :0123456789abcdef",
            b"other:0123456789abcdef",
            b"\xff\xfe:0123456789abcdef",
            b"",
        ] {
            assert_eq!(tester_role(refused, &secret), None, "{refused:?}");
        }
    }
    use proptest::prelude::*;

    /// Chi-square critical value for one degree of freedom at p = 1e-6: a
    /// correct splitter exceeds it about once in a million runs.
    const CHI2_1DF_P1E6: f64 = 23.93;

    fn chi_square(canary: u64, total: u64, share: Bps) -> f64 {
        let p = share.as_percent() / 100.0;
        let expected_canary = total as f64 * p;
        let expected_baseline = total as f64 - expected_canary;
        let observed_baseline = (total - canary) as f64;
        (canary as f64 - expected_canary).powi(2) / expected_canary
            + (observed_baseline - expected_baseline).powi(2) / expected_baseline
    }

    fn canary_count(draws: &[u64], share: Bps) -> u64 {
        draws
            .iter()
            .filter(|&&d| role_at(point_from_draw(d), share) == Role::Canary)
            .count() as u64
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]

        #[test]
        fn random_split_matches_share_within_chi_square(
            draws in prop::collection::vec(any::<u64>(), 20_000),
        ) {
            for share in [Bps::new(2000).unwrap(), Bps::new(5000).unwrap()] {
                let canary = canary_count(&draws, share);
                let x2 = chi_square(canary, draws.len() as u64, share);
                prop_assert!(x2 < CHI2_1DF_P1E6, "share {share}: {canary} canary of {}, chi2 {x2}", draws.len());
            }
            prop_assert_eq!(canary_count(&draws, Bps::FULL), draws.len() as u64);
            prop_assert_eq!(canary_count(&draws, Bps::ZERO), 0);
        }

        #[test]
        fn points_stay_in_range(draw in any::<u64>()) {
            prop_assert!(point_from_draw(draw) < 10_000);
        }

        #[test]
        fn sticky_is_deterministic_and_monotone_under_a_ramp(
            key in prop::collection::vec(any::<u8>(), 0..64),
            deployment in "[a-z][a-z0-9-]{0,20}",
            a in 0u16..=10_000,
            b in 0u16..=10_000,
        ) {
            let seed = sticky_seed(&deployment);
            let point = sticky_point(seed, &key);
            prop_assert_eq!(point, sticky_point(sticky_seed(&deployment), &key));
            let (low, high) = (Bps::new(a.min(b)).unwrap(), Bps::new(a.max(b)).unwrap());
            if role_at(point, low) == Role::Canary {
                prop_assert_eq!(role_at(point, high), Role::Canary);
            }
        }
    }

    #[test]
    fn sticky_users_spread_over_both_roles() {
        let seed = sticky_seed("heart-prod");
        let total = 20_000u64;
        for share in [2000, 5000] {
            let share = Bps::new(share).unwrap();
            let canary = (0..total)
                .filter(|i| {
                    role_at(sticky_point(seed, format!("user-{i}").as_bytes()), share)
                        == Role::Canary
                })
                .count() as u64;
            let x2 = chi_square(canary, total, share);
            assert!(
                x2 < CHI2_1DF_P1E6,
                "share {share}: {canary}/{total}, chi2 {x2}"
            );
        }
    }

    #[test]
    fn a_ramp_only_moves_users_towards_the_canary() {
        let seed = sticky_seed("heart-prod");
        let users: Vec<u16> = (0..5000)
            .map(|i| sticky_point(seed, format!("user-{i}").as_bytes()))
            .collect();
        let at = |bps| {
            users
                .iter()
                .map(|&p| role_at(p, Bps::new(bps).unwrap()))
                .collect::<Vec<_>>()
        };
        let (before, after) = (at(2000), at(5000));
        let moved = before.iter().zip(&after).filter(|(b, a)| b != a).count();
        assert!(
            before
                .iter()
                .zip(&after)
                .all(|(b, a)| *b == Role::Baseline || *a == Role::Canary)
        );
        // About 30 % of users move, all of them baseline → canary.
        assert!((1200..1800).contains(&moved), "{moved} moved");
    }

    /// Pinned values: these must come out identically on 64-bit hosts and on
    /// wasm32 (where `usize` is 32 bits), or users would change roles when the
    /// filter runs in a proxy.
    #[test]
    fn golden_points_are_platform_independent() {
        assert_eq!(point_from_draw(0), 0);
        assert_eq!(point_from_draw(u64::MAX), 9999);
        assert_eq!(point_from_draw(1 << 63), 5000);
        assert_eq!(point_from_draw(0x3333_3333_3333_3334), 2000);
        assert_eq!(sticky_seed("heart-prod"), GOLDEN_SEED);
        let points: Vec<u16> = ["alice", "bob", "", "user-42", "ünïcode"]
            .iter()
            .map(|k| sticky_point(GOLDEN_SEED, k.as_bytes()))
            .collect();
        assert_eq!(points, GOLDEN_POINTS);
    }
    const GOLDEN_SEED: u64 = 8764348662923414899;
    const GOLDEN_POINTS: [u16; 5] = [4084, 7182, 6365, 1349, 9013];

    #[test]
    fn requests_match_by_prefix_and_host() {
        let m = RequestMatch {
            path_prefix: "/predict/heart".into(),
            host: None,
        };
        assert!(m.matches(b"/predict/heart", None));
        assert!(m.matches(b"/predict/heart?x=1", Some(b"anything")));
        assert!(!m.matches(b"/predict/hear", None));
        assert!(!m.matches(b"", None));

        let h = RequestMatch {
            path_prefix: "/".into(),
            host: Some("models.example.com".into()),
        };
        assert!(h.matches(b"/x", Some(b"models.example.com")));
        assert!(h.matches(b"/x", Some(b"Models.Example.COM:10000")));
        assert!(!h.matches(b"/x", Some(b"models.example.com.evil")));
        assert!(!h.matches(b"/x", None));
        assert!(!h.matches(b"/x", Some(b"models.example.com:abc")));

        let v6 = RequestMatch {
            path_prefix: "/".into(),
            host: Some("[::1]".into()),
        };
        assert!(v6.matches(b"/", Some(b"[::1]:8080")));
        assert!(v6.matches(b"/", Some(b"[::1]")));

        let all = [m, h];
        assert_eq!(find_match(&all, b"/predict/heart/x", None), Some(0));
        assert_eq!(
            find_match(&all, b"/x", Some(b"models.example.com")),
            Some(1)
        );
        assert_eq!(find_match(&all, b"/x", None), None);
    }
}
