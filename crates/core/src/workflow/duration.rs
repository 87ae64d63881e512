//! Durations as written in workflow files: `500ms`, `30s`, `5m`, `2h`, `1d`, `1h30m`.

use super::model::DurationMs;

/// Upper bound on any duration: 400 days.
pub const MAX_DURATION_MS: u64 = 400 * 86_400_000;

/// Parses a sequence of `<digits><unit>` groups, units `ms`, `s`, `m`, `h`, `d`, each at most
/// once and largest first (`1h30m`, not `30m1h`).
pub fn parse_duration(text: &str) -> Result<DurationMs, String> {
    const UNITS: [(&str, u64); 5] = [
        ("d", 86_400_000),
        ("h", 3_600_000),
        ("m", 60_000),
        ("s", 1_000),
        ("ms", 1),
    ];
    let expected = "expected a duration such as `500ms`, `30s`, `5m`, `2h`, `1d` or `1h30m`";
    let trimmed = text.trim();
    if trimmed.is_empty() {
        return Err(format!("empty duration; {expected}"));
    }
    let mut rest = trimmed;
    let mut total: u64 = 0;
    let mut last_unit_rank: Option<usize> = None;
    while !rest.is_empty() {
        let digits = rest.chars().take_while(|c| c.is_ascii_digit()).count();
        if digits == 0 {
            return Err(format!("`{trimmed}` is not a duration; {expected}"));
        }
        let (number, after) = rest.split_at(digits);
        let unit_len = after
            .chars()
            .take_while(|c| c.is_ascii_alphabetic())
            .count();
        let (unit, after) = after.split_at(unit_len);
        let Some(rank) = UNITS.iter().position(|(name, _)| *name == unit) else {
            let what = if unit.is_empty() {
                "a number needs a unit".to_string()
            } else {
                format!("unknown unit `{unit}`")
            };
            return Err(format!("`{trimmed}`: {what}; {expected}"));
        };
        if last_unit_rank.is_some_and(|last| rank <= last) {
            return Err(format!(
                "`{trimmed}`: units must go from largest to smallest, each once"
            ));
        }
        last_unit_rank = Some(rank);
        let value: u64 = number
            .parse()
            .map_err(|_| format!("`{trimmed}` is too large"))?;
        total = value
            .checked_mul(UNITS[rank].1)
            .and_then(|ms| total.checked_add(ms))
            .ok_or_else(|| format!("`{trimmed}` is too large"))?;
        rest = after;
    }
    if total > MAX_DURATION_MS {
        return Err(format!("`{trimmed}` is longer than the limit of 400d"));
    }
    Ok(DurationMs(total))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn parses_units_and_combinations() {
        for (text, ms) in [
            ("500ms", 500),
            ("30s", 30_000),
            ("5m", 300_000),
            ("2h", 7_200_000),
            ("1d", 86_400_000),
            ("1h30m", 5_400_000),
            ("1d2h3m4s5ms", 93_784_005),
            ("0s", 0),
        ] {
            assert_eq!(parse_duration(text), Ok(DurationMs(ms)), "{text}");
        }
    }

    #[test]
    fn rejects_nonsense() {
        for text in [
            "",
            "5",
            "h",
            "5x",
            "30m1h",
            "1h1h",
            "-5s",
            "1.5h",
            "99999999999999999999s",
            "401d",
            "5 m",
        ] {
            assert!(parse_duration(text).is_err(), "{text}");
        }
    }
}
