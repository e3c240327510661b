//! Which backend answers a user: a default backend and one canary (a target backend, a percent
//! of users by a stable hash of their id, and test users), changed at runtime by `rollout.json`
//! and the admins' `/rollout` commands ([`rollout`]).

pub mod rollout;

use std::collections::BTreeSet;

/// The canary: some users on another backend than the default.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Canary {
    pub backend: String,
    /// Off sends everyone, test users too, to the default (`USE_OPENAI_RESPONSES=false`).
    pub enabled: bool,
    /// 0–100: users whose [`bucket`] is below it.
    pub percent: u8,
    /// Always on the canary while it is enabled.
    pub test_users: BTreeSet<i64>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Routing {
    pub default: String,
    pub canary: Option<Canary>,
}

/// Why a user landed where they did, for the turn's log line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reason {
    /// There is no canary, or it is off.
    FlagOff,
    TestUser,
    InRollout,
    OutsideRollout,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::FlagOff => "flag_off",
            Reason::TestUser => "test_user",
            Reason::InRollout => "in_rollout",
            Reason::OutsideRollout => "outside_rollout",
        }
    }
}

impl Routing {
    /// Everyone on one backend.
    pub fn only(backend: impl Into<String>) -> Self {
        Self { default: backend.into(), canary: None }
    }

    pub fn route(&self, user_id: i64) -> (&str, Reason) {
        let Some(canary) = self.canary.as_ref().filter(|c| c.enabled) else {
            return (&self.default, Reason::FlagOff);
        };
        if canary.test_users.contains(&user_id) {
            return (&canary.backend, Reason::TestUser);
        }
        if bucket(user_id) < canary.percent.min(100) {
            (&canary.backend, Reason::InRollout)
        } else {
            (&self.default, Reason::OutsideRollout)
        }
    }

    /// Every backend this routing can send a user to.
    pub fn backends(&self) -> Vec<&str> {
        let mut names = vec![self.default.as_str()];
        if let Some(c) = &self.canary {
            if c.backend != self.default {
                names.push(&c.backend);
            }
        }
        names
    }
}

impl std::fmt::Display for Routing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "default {}", self.default)?;
        match &self.canary {
            None => write!(f, ", no canary"),
            Some(c) => {
                let users = if c.test_users.is_empty() {
                    "none".to_string()
                } else {
                    c.test_users.iter().map(|u| u.to_string()).collect::<Vec<_>>().join(", ")
                };
                let state = if c.enabled { "on" } else { "off" };
                write!(f, ", canary {} {state} at {}%, test users: {users}", c.backend, c.percent)
            }
        }
    }
}

/// The user's canary bucket, 0–99: FNV-1a (64-bit) of the decimal user id, modulo 100.
/// A pure function of the id, the same on every machine and every release: never change it,
/// or users would jump between backends on upgrade.
pub fn bucket(user_id: i64) -> u8 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in user_id.to_string().bytes() {
        hash ^= byte as u64;
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    (hash % 100) as u8
}

#[cfg(test)]
mod tests {
    use super::*;

    fn canary(backend: &str, enabled: bool, percent: u8, test_users: &[i64]) -> Routing {
        Routing {
            default: "old".into(),
            canary: Some(Canary { backend: backend.into(), enabled, percent, test_users: test_users.iter().copied().collect() }),
        }
    }

    #[test]
    fn buckets_are_pinned_forever() {
        // Changing these values moves real users between backends: it must never happen.
        let pinned: Vec<u8> = [1i64, 42, 123456789, 5_000_000_000, -100].iter().map(|&u| bucket(u)).collect();
        let expected: Vec<u8> = [1i64, 42, 123456789, 5_000_000_000, -100]
            .iter()
            .map(|u| {
                // Reference FNV-1a written independently of `bucket`.
                let h = u.to_string().bytes().fold(14695981039346656037u64, |h, b| (h ^ b as u64).wrapping_mul(1099511628211));
                (h % 100) as u8
            })
            .collect();
        assert_eq!(pinned, expected);
        // Literal values (also computed by an independent Python FNV-1a): never change them.
        assert_eq!(pinned, vec![68, 91, 48, 48, 99]);
    }

    #[test]
    fn rollout_share_matches_the_percent_and_is_sticky() {
        let routing = canary("new", true, 20, &[]);
        let on_new = (1..=10_000i64).filter(|&u| routing.route(u).0 == "new").count();
        assert!((1_700..=2_300).contains(&on_new), "{on_new} of 10000 on the new path at 20%");
        for u in 1..=1000 {
            assert_eq!(routing.route(u), routing.route(u));
        }
        let wider = canary("new", true, 50, &[]);
        for u in 1..=1000 {
            if routing.route(u).0 == "new" {
                assert_eq!(wider.route(u).0, "new", "widening never moves a user back");
            }
        }
    }

    #[test]
    fn a_canary_that_is_off_sends_everyone_to_the_default_even_test_users() {
        let off = canary("new", false, 100, &[7]);
        assert_eq!(off.route(7), ("old", Reason::FlagOff));
        let on = canary("new", true, 0, &[7]);
        assert_eq!(on.route(7), ("new", Reason::TestUser));
        assert_eq!(on.route(8), ("old", Reason::OutsideRollout));
        assert_eq!(Routing::only("solo").route(7), ("solo", Reason::FlagOff));
    }

    #[test]
    fn the_canary_target_is_any_backend_and_the_buckets_do_not_depend_on_it() {
        let a = canary("chat", true, 30, &[]);
        let b = canary("echo", true, 30, &[]);
        for u in 1..=2000 {
            assert_eq!(a.route(u).0 == "chat", b.route(u).0 == "echo", "user {u}");
        }
    }
}
