//! Which backend answers a user: the flag, the canary percent and the test users.

pub mod rollout;

use std::collections::BTreeSet;

/// The two backends the product knows by name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Backend {
    Assistants,
    Responses,
}

impl Backend {
    pub const ALL: [Backend; 2] = [Backend::Assistants, Backend::Responses];

    pub fn name(self) -> &'static str {
        match self {
            Backend::Assistants => "assistants",
            Backend::Responses => "responses",
        }
    }

    pub fn file_name(self) -> &'static str {
        match self {
            Backend::Assistants => "assistants.wasm",
            Backend::Responses => "responses.wasm",
        }
    }

    pub fn parse(name: &str) -> Option<Backend> {
        match name {
            "assistants" => Some(Backend::Assistants),
            "responses" => Some(Backend::Responses),
            _ => None,
        }
    }
}

impl std::fmt::Display for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Routing {
    /// `USE_OPENAI_RESPONSES`: off sends everyone to the legacy backend.
    pub use_responses: bool,
    /// `RESPONSES_ROLLOUT_PERCENT`, 0–100.
    pub rollout_percent: u8,
    /// `RESPONSES_TEST_USERS`: always on the new backend while the flag is on.
    pub test_users: BTreeSet<i64>,
}

impl Default for Routing {
    fn default() -> Self {
        Self { use_responses: false, rollout_percent: 100, test_users: BTreeSet::new() }
    }
}

/// Why a user landed where they did, for the turn's log line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reason {
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
    pub fn route(&self, user_id: i64) -> (Backend, Reason) {
        if !self.use_responses {
            return (Backend::Assistants, Reason::FlagOff);
        }
        if self.test_users.contains(&user_id) {
            return (Backend::Responses, Reason::TestUser);
        }
        if bucket(user_id) < self.rollout_percent.min(100) {
            (Backend::Responses, Reason::InRollout)
        } else {
            (Backend::Assistants, Reason::OutsideRollout)
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
        let routing = Routing { use_responses: true, rollout_percent: 20, test_users: BTreeSet::new() };
        let on_new = (1..=10_000i64).filter(|&u| routing.route(u).0 == Backend::Responses).count();
        assert!((1_700..=2_300).contains(&on_new), "{on_new} of 10000 on the new path at 20%");
        for u in 1..=1000 {
            assert_eq!(routing.route(u), routing.route(u));
        }
        let wider = Routing { rollout_percent: 50, ..routing.clone() };
        for u in 1..=1000 {
            if routing.route(u).0 == Backend::Responses {
                assert_eq!(wider.route(u).0, Backend::Responses, "widening never moves a user back");
            }
        }
    }

    #[test]
    fn flag_off_sends_everyone_to_legacy_even_test_users() {
        let routing = Routing { use_responses: false, rollout_percent: 100, test_users: [7].into() };
        assert_eq!(routing.route(7), (Backend::Assistants, Reason::FlagOff));
        let on = Routing { use_responses: true, rollout_percent: 0, ..routing };
        assert_eq!(on.route(7), (Backend::Responses, Reason::TestUser));
        assert_eq!(on.route(8).0, Backend::Assistants);
    }
}
