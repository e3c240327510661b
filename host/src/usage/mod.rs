//! What the bot costs: token counts per turn priced from a table ([`prices`]), counters per user
//! and overall per UTC day and month kept durable in `DATA_DIR/usage.jsonl` ([`ledger`]), and the
//! operator's budgets checked before a turn makes any request. With `DATABASE_URL` the counters are
//! every replica's ([`shared`]).

pub mod ledger;
pub mod prices;
pub mod shared;

pub use ledger::{Ledger, Totals};
pub use prices::{PriceTable, TokenCounts};

/// One budget: an amount of tokens (input + output) or of US dollars.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Limit {
    Tokens(u64),
    /// In millionths of a dollar, so that sums stay exact.
    MicroUsd(u64),
}

impl Limit {
    /// `"200000"`, `"200000 tokens"`, `"2.50 usd"`, `"$2.50"`.
    pub fn parse(text: &str) -> Result<Limit, String> {
        let t = text.trim().to_ascii_lowercase();
        let money = t.strip_prefix('$').or_else(|| t.strip_suffix("usd")).map(str::trim);
        if let Some(amount) = money {
            return match amount.parse::<f64>() {
                Ok(v) if v.is_finite() && v > 0.0 => Ok(Limit::MicroUsd((v * 1e6).round() as u64)),
                _ => Err(format!("expected an amount such as \"2.50 usd\", got {text:?}")),
            };
        }
        let tokens = t.strip_suffix("tokens").unwrap_or(&t).trim().replace('_', "");
        match tokens.parse::<u64>() {
            Ok(n) if n > 0 => Ok(Limit::Tokens(n)),
            _ => Err(format!("expected a token count such as \"200000 tokens\" or an amount such as \"2.50 usd\", got {text:?}")),
        }
    }

    fn exceeded_by(&self, totals: &Totals) -> bool {
        match *self {
            Limit::Tokens(n) => totals.tokens() >= n,
            Limit::MicroUsd(n) => totals.micro_usd >= n,
        }
    }
}

/// The operator's optional limits. Admins are exempt.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Budgets {
    pub user_day: Option<Limit>,
    pub user_month: Option<Limit>,
    pub total_day: Option<Limit>,
    pub total_month: Option<Limit>,
}

impl Budgets {
    pub fn any(&self) -> bool {
        self.user_day.is_some() || self.user_month.is_some() || self.total_day.is_some() || self.total_month.is_some()
    }
}

/// Which budget a turn would exceed, and when it resets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exceeded {
    UserDay,
    UserMonth,
    TotalDay,
    TotalMonth,
}

impl Exceeded {
    /// The one polite sentence the user gets (no request is made).
    pub fn sentence(&self, now_unix_ms: u64) -> String {
        let (whose, period) = match self {
            Exceeded::UserDay => ("You have used today's allowance", ledger::Period::Day),
            Exceeded::UserMonth => ("You have used this month's allowance", ledger::Period::Month),
            Exceeded::TotalDay => ("The assistant has used today's allowance", ledger::Period::Day),
            Exceeded::TotalMonth => ("The assistant has used this month's allowance", ledger::Period::Month),
        };
        let resets = ledger::period_end_ms(period, now_unix_ms);
        format!("{whose} of answers; it resets at {} UTC (in {}).", format_utc(resets), format_wait(resets.saturating_sub(now_unix_ms)))
    }
}

/// Checks `user`'s counters and the overall ones against the budgets.
pub fn check(budgets: &Budgets, ledger: &Ledger, user_id: i64, now_unix_ms: u64) -> Result<(), Exceeded> {
    if !budgets.any() {
        return Ok(());
    }
    let usage = ledger.usage_of(user_id, now_unix_ms);
    let total = ledger.total(now_unix_ms);
    let checks = [
        (budgets.user_day, usage.day, Exceeded::UserDay),
        (budgets.user_month, usage.month, Exceeded::UserMonth),
        (budgets.total_day, total.day, Exceeded::TotalDay),
        (budgets.total_month, total.month, Exceeded::TotalMonth),
    ];
    for (limit, totals, which) in checks {
        if limit.is_some_and(|l| l.exceeded_by(&totals)) {
            return Err(which);
        }
    }
    Ok(())
}

/// `2026-12-02 00:00`.
pub fn format_utc(unix_ms: u64) -> String {
    let (y, m, d) = crate::calendar::civil_from_days((unix_ms / 86_400_000) as i64);
    let secs = (unix_ms / 1000) % 86_400;
    format!("{y:04}-{m:02}-{d:02} {:02}:{:02}", secs / 3600, secs / 60 % 60)
}

fn format_wait(ms: u64) -> String {
    let minutes = ms.div_ceil(60_000);
    match (minutes / (60 * 24), minutes / 60 % 24, minutes % 60) {
        (0, 0, m) => format!("{m} min"),
        (0, h, m) => format!("{h} h {m} min"),
        (d, h, _) => format!("{d} d {h} h"),
    }
}

/// Dollars from millionths, for people: `$0.0123`.
pub fn format_usd(micro_usd: u64) -> String {
    format!("${:.4}", micro_usd as f64 / 1e6)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_parse_tokens_and_money() {
        assert_eq!(Limit::parse("200000").unwrap(), Limit::Tokens(200_000));
        assert_eq!(Limit::parse("200_000 tokens").unwrap(), Limit::Tokens(200_000));
        assert_eq!(Limit::parse("2.50 USD").unwrap(), Limit::MicroUsd(2_500_000));
        assert_eq!(Limit::parse("$0.01").unwrap(), Limit::MicroUsd(10_000));
        for bad in ["", "0", "-5", "lots", "$", "nan usd", "1.5 tokens"] {
            assert!(Limit::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_sentence_says_when_it_resets() {
        // 2026-12-01 21:30 UTC
        let now = 1_796_160_600_000;
        assert_eq!(format_utc(now), "2026-12-01 21:30");
        assert_eq!(
            Exceeded::UserDay.sentence(now),
            "You have used today's allowance of answers; it resets at 2026-12-02 00:00 UTC (in 2 h 30 min)."
        );
        assert!(Exceeded::TotalMonth.sentence(now).contains("2027-01-01 00:00 UTC (in 30 d 2 h)"));
    }
}
