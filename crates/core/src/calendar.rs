//! Business calendars: SLA and escalation delays counted in working time.
//!
//! A [`Calendar`] has a time zone, working days, working hours (one or more local `[start, end)`
//! intervals, the same on every working day) and holidays (local dates). It answers three
//! questions, always from an instant it is given (core reads no clock):
//! [`Calendar::add_business`] (when is "4 business hours after this" due),
//! [`Calendar::business_between`] (how much working time passed, for SLA reports) and
//! [`Calendar::next_working_instant`].
//!
//! Working time is counted in wall-clock intervals of the calendar's zone, turned into UTC
//! instants day by day, so "09:00–17:00" stays 09:00–17:00 local across a daylight-saving
//! change. Each interval boundary is **the first instant at which the local wall clock reads that
//! time or later**:
//! - a time that exists once is that instant;
//! - a time that occurs twice (the clock is set back) is its first occurrence, so an interval
//!   lying wholly inside the repeated hour is counted once, and an interval that starts inside it
//!   and ends after it also covers the repeat (the clock took longer to reach the end);
//! - a time that the clock skips (it is set forward) is the instant of the change, so an
//!   interval lying wholly inside the skipped hour is empty that day and one spanning it is an
//!   hour shorter.
//!
//! This rule is monotone, so the working intervals of consecutive days never overlap, and a
//! 24/7 calendar (`00:00-24:00` every day) counts exactly the elapsed time.
//!
//! Limits: at most [`MAX_HOLIDAYS`] holidays and [`MAX_INTERVALS_PER_DAY`] intervals, names of
//! at most [`MAX_NAME_BYTES`] bytes; the search for working time stops
//! [`MAX_HORIZON_DAYS`] days after the instant given, with [`Error::BeyondHorizon`]. The work
//! is one step per calendar day (a day off costs a set lookup), never a step per minute.

use std::collections::BTreeSet;
use std::ops::ControlFlow;
use std::str::FromStr;
use std::time::Duration;

use chrono::{
    DateTime, Datelike, Days, NaiveDate, NaiveDateTime, TimeDelta, TimeZone, Utc, Weekday,
};
use chrono_tz::Tz;
use serde::{Deserialize, Serialize};

/// Holidays one calendar may list (more than a year of every-day holidays).
pub const MAX_HOLIDAYS: usize = 400;
/// Working-hour intervals per day.
pub const MAX_INTERVALS_PER_DAY: usize = 16;
/// Length of a calendar's name.
pub const MAX_NAME_BYTES: usize = 128;
/// How far (in calendar days after the instant given) a calendar looks for working time before
/// it gives up: about ten years. Also the longest span [`Calendar::business_between`] accepts.
pub const MAX_HORIZON_DAYS: u64 = 3_660;

/// Longest run of wall-clock time a zone has ever skipped (Pacific/Apia skipped a whole day
/// in 2011), with a margin.
const MAX_GAP_MINUTES: i64 = 26 * 60;
const MINUTES_PER_DAY: u16 = 24 * 60;
/// How much of an offending value an error message repeats.
const MAX_ERROR_VALUE_CHARS: usize = 64;

/// A calendar as written in a configuration file (TOML, YAML or JSON), before it is checked:
///
/// ```json
/// {"time_zone": "Europe/Berlin", "working_days": ["mon", "tue", "wed", "thu", "fri"],
///  "hours": ["09:00-12:30", "13:30-17:00"], "holidays": ["2026-12-25", "2026-12-26"]}
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CalendarSpec {
    /// An IANA time zone name such as `Europe/Berlin`.
    pub time_zone: String,
    /// Days of the week: `mon` … `sun` (or full English names), any case.
    pub working_days: Vec<String>,
    /// Local `HH:MM-HH:MM` intervals, end excluded; `24:00` may end one.
    pub hours: Vec<String>,
    /// Local dates `YYYY-MM-DD` on which nobody works.
    #[serde(default)]
    pub holidays: Vec<String>,
}

/// A checked business calendar. Build one with [`Calendar::from_spec`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Calendar {
    name: String,
    time_zone: Tz,
    /// Indexed by `Weekday::num_days_from_monday`.
    working_days: [bool; 7],
    /// Sorted, non-overlapping, non-empty.
    hours: Vec<WorkingHours>,
    holidays: BTreeSet<NaiveDate>,
}

/// One local working interval, in minutes after midnight: `[start_minute, end_minute)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct WorkingHours {
    start_minute: u16,
    end_minute: u16,
}

/// Why a calendar spec was refused, or why a question has no answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    #[error("calendar `{calendar}`: the name must be 1 to {MAX_NAME_BYTES} bytes long")]
    BadName { calendar: String },
    #[error(
        "calendar `{calendar}`: time_zone: unknown time zone `{value}`; write an IANA time zone \
         name such as `Europe/Berlin` or `America/New_York`{hint}"
    )]
    UnknownTimeZone {
        calendar: String,
        value: String,
        /// Empty, or `; did you mean …?`.
        hint: String,
    },
    #[error(
        "calendar `{calendar}`: working_days[{index}]: `{value}` is not a day of the week; write \
         mon, tue, wed, thu, fri, sat or sun"
    )]
    UnknownWorkingDay {
        calendar: String,
        index: usize,
        value: String,
    },
    #[error("calendar `{calendar}`: working_days[{index}]: `{value}` is listed twice")]
    DuplicateWorkingDay {
        calendar: String,
        index: usize,
        value: String,
    },
    #[error(
        "calendar `{calendar}`: hours[{index}]: `{value}` is not a time interval; write \
         HH:MM-HH:MM in local time, such as `09:00-17:00` (`24:00` may end an interval)"
    )]
    BadHours {
        calendar: String,
        index: usize,
        value: String,
    },
    #[error(
        "calendar `{calendar}`: hours[{index}]: `{value}` does not end after it starts; an \
         interval cannot cross midnight, so write `22:00-24:00` and `00:00-06:00` instead"
    )]
    EmptyHours {
        calendar: String,
        index: usize,
        value: String,
    },
    #[error("calendar `{calendar}`: hours: `{first}` and `{second}` overlap; list each working minute once")]
    OverlappingHours {
        calendar: String,
        first: String,
        second: String,
    },
    #[error(
        "calendar `{calendar}`: holidays[{index}]: `{value}` is not a date; write YYYY-MM-DD, \
         such as `2026-12-25`"
    )]
    BadHoliday {
        calendar: String,
        index: usize,
        value: String,
    },
    #[error("calendar `{calendar}`: {field} has {count} entries; at most {limit} are allowed")]
    TooManyEntries {
        calendar: String,
        field: &'static str,
        count: usize,
        limit: usize,
    },
    #[error("calendar `{calendar}`: no working time, because {field} is empty")]
    NoWorkingTime {
        calendar: String,
        field: &'static str,
    },
    #[error(
        "calendar `{calendar}`: not enough working time within {limit_days} days after {start} \
         (the limit of the search); use a shorter duration or a calendar with more working time"
    )]
    BeyondHorizon {
        calendar: String,
        start: DateTime<Utc>,
        limit_days: u64,
    },
    #[error(
        "calendar `{calendar}`: the span from {from} to {to} is longer than {limit_days} days; \
         measure it in parts"
    )]
    SpanTooLong {
        calendar: String,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
        limit_days: u64,
    },
    #[error(
        "calendar `{calendar}`: {instant} is too close to the end of the supported date range"
    )]
    OutOfRange {
        calendar: String,
        instant: DateTime<Utc>,
    },
}

impl Calendar {
    /// Checks `spec` and builds the calendar called `name` (the name only appears in errors
    /// and in [`Calendar::name`]).
    pub fn from_spec(name: &str, spec: &CalendarSpec) -> Result<Calendar, Error> {
        let calendar = name.to_string();
        if name.is_empty() || name.len() > MAX_NAME_BYTES {
            return Err(Error::BadName {
                calendar: clip(name),
            });
        }
        Ok(Calendar {
            time_zone: parse_time_zone(name, &spec.time_zone)?,
            working_days: parse_working_days(name, &spec.working_days)?,
            hours: parse_hours(name, &spec.hours)?,
            holidays: parse_holidays(name, &spec.holidays)?,
            name: calendar,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn time_zone(&self) -> Tz {
        self.time_zone
    }

    /// Whether `date` (local) is a working day of the week and not a holiday.
    pub fn is_working_day(&self, date: NaiveDate) -> bool {
        let weekday = date.weekday().num_days_from_monday() as usize;
        self.working_days[weekday] && !self.holidays.contains(&date)
    }

    /// The first working instant at or after `instant` (`instant` itself inside working hours).
    pub fn next_working_instant(&self, instant: DateTime<Utc>) -> Result<DateTime<Utc>, Error> {
        let found = self.walk_spans(instant, MAX_HORIZON_DAYS, |start, _| {
            ControlFlow::Break(start)
        })?;
        found.ok_or_else(|| self.beyond_horizon(instant))
    }

    /// The instant at which `duration` of working time has elapsed after `start`. Counting
    /// begins at the next working instant if `start` is outside working time; a duration that
    /// ends exactly at the end of a working interval is due at that end (Friday 17:00, not
    /// Monday 09:00). A zero duration is due at `start` itself, which keeps
    /// `add_business(add_business(s, a), b) == add_business(s, a + b)` true for every `a`, `b`.
    pub fn add_business(
        &self,
        start: DateTime<Utc>,
        duration: Duration,
    ) -> Result<DateTime<Utc>, Error> {
        if duration.is_zero() {
            return Ok(start);
        }
        let horizon = TimeDelta::days(MAX_HORIZON_DAYS as i64);
        let mut remaining = match TimeDelta::from_std(duration) {
            Ok(remaining) if remaining <= horizon => remaining,
            _ => return Err(self.beyond_horizon(start)),
        };
        let found = self.walk_spans(start, MAX_HORIZON_DAYS, |span_start, span_end| {
            let available = span_end - span_start;
            if remaining <= available {
                ControlFlow::Break(span_start + remaining)
            } else {
                remaining -= available;
                ControlFlow::Continue(())
            }
        })?;
        found.ok_or_else(|| self.beyond_horizon(start))
    }

    /// Working time between two instants (zero when `to` is not after `from`), for SLA
    /// compliance reports. Spans longer than [`MAX_HORIZON_DAYS`] are refused.
    pub fn business_between(
        &self,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    ) -> Result<Duration, Error> {
        if to <= from {
            return Ok(Duration::ZERO);
        }
        if to - from > TimeDelta::days(MAX_HORIZON_DAYS as i64) {
            return Err(Error::SpanTooLong {
                calendar: self.name.clone(),
                from,
                to,
                limit_days: MAX_HORIZON_DAYS,
            });
        }
        let mut total = TimeDelta::zero();
        // Two more days than the span: `to`'s local date can be a day past `from`'s plus the
        // span when the offsets differ.
        self.walk_spans(from, MAX_HORIZON_DAYS + 2, |span_start, span_end| {
            if span_start >= to {
                return ControlFlow::Break(());
            }
            total += span_end.min(to) - span_start;
            ControlFlow::Continue(())
        })?;
        Ok(total.to_std().unwrap_or(Duration::ZERO))
    }

    /// Calls `visit` with each working span `[start, end)` (UTC, in order, non-empty) that ends
    /// after `from`, its start clipped to `from`, for the local dates from the day before
    /// `from`'s through `days` days after it. `Ok(None)` when the dates ran out first.
    fn walk_spans<T>(
        &self,
        from: DateTime<Utc>,
        days: u64,
        mut visit: impl FnMut(DateTime<Utc>, DateTime<Utc>) -> ControlFlow<T>,
    ) -> Result<Option<T>, Error> {
        let out_of_range = || Error::OutOfRange {
            calendar: self.name.clone(),
            instant: from,
        };
        let local_date = from.with_timezone(&self.time_zone).date_naive();
        // The day before too: its last interval may end after `from` around a DST change.
        let first_date = local_date.pred_opt().ok_or_else(out_of_range)?;
        for day in 0..=days + 1 {
            let date = first_date
                .checked_add_days(Days::new(day))
                .ok_or_else(out_of_range)?;
            if !self.is_working_day(date) {
                continue;
            }
            for hours in &self.hours {
                let start = self.boundary(date, hours.start_minute);
                let end = self.boundary(date, hours.end_minute);
                let (Some(start), Some(end)) = (start, end) else {
                    return Err(out_of_range());
                };
                let start = start.max(from);
                if start < end {
                    if let ControlFlow::Break(value) = visit(start, end) {
                        return Ok(Some(value));
                    }
                }
            }
        }
        Ok(None)
    }

    /// The first instant at which the wall clock reads `minute` (after midnight; 1440 is the
    /// next midnight) on `date`, or later. See the module documentation.
    fn boundary(&self, date: NaiveDate, minute: u16) -> Option<DateTime<Utc>> {
        let (date, minute) = if minute >= MINUTES_PER_DAY {
            (date.succ_opt()?, minute - MINUTES_PER_DAY)
        } else {
            (date, minute)
        };
        let local = date.and_hms_opt(u32::from(minute / 60), u32::from(minute % 60), 0)?;
        match self.time_zone.from_local_datetime(&local).earliest() {
            Some(instant) => Some(instant.with_timezone(&Utc)),
            None => self.end_of_gap(local),
        }
    }

    /// The instant of the change that made the wall clock skip `local`.
    fn end_of_gap(&self, local: NaiveDateTime) -> Option<DateTime<Utc>> {
        // The first whole minute after `local` that exists comes at most a minute after the
        // change; the second before it is found by bisection (changes fall on whole seconds).
        let after = (1..=MAX_GAP_MINUTES).find_map(|minutes| {
            let later = local.checked_add_signed(TimeDelta::minutes(minutes))?;
            self.time_zone.from_local_datetime(&later).earliest()
        })?;
        let mut at_or_after = after.with_timezone(&Utc);
        let mut before = at_or_after - TimeDelta::minutes(1);
        while at_or_after - before > TimeDelta::seconds(1) {
            let middle = before + (at_or_after - before) / 2;
            if middle.with_timezone(&self.time_zone).naive_local() >= local {
                at_or_after = middle;
            } else {
                before = middle;
            }
        }
        Some(at_or_after)
    }

    fn beyond_horizon(&self, start: DateTime<Utc>) -> Error {
        Error::BeyondHorizon {
            calendar: self.name.clone(),
            start,
            limit_days: MAX_HORIZON_DAYS,
        }
    }
}

fn parse_time_zone(calendar: &str, value: &str) -> Result<Tz, Error> {
    if let Ok(time_zone) = Tz::from_str(value.trim()) {
        return Ok(time_zone);
    }
    let hint = suggest_time_zone(value)
        .map(|name| format!("; did you mean `{name}`?"))
        .unwrap_or_default();
    Err(Error::UnknownTimeZone {
        calendar: calendar.to_string(),
        value: clip(value),
        hint,
    })
}

/// An IANA name equal to `value` but for case and spaces, or ending in `/value` (`berlin`
/// → `Europe/Berlin`).
fn suggest_time_zone(value: &str) -> Option<&'static str> {
    let wanted = value.trim().replace(' ', "_").to_ascii_lowercase();
    if wanted.is_empty() || wanted.len() > MAX_ERROR_VALUE_CHARS {
        return None;
    }
    let names = || {
        chrono_tz::TZ_VARIANTS
            .iter()
            .map(|time_zone| time_zone.name())
    };
    names()
        .find(|name| name.to_ascii_lowercase() == wanted)
        .or_else(|| {
            names().find(|name| {
                name.rsplit_once('/')
                    .is_some_and(|(_, city)| city.to_ascii_lowercase() == wanted)
            })
        })
}

fn parse_working_days(calendar: &str, values: &[String]) -> Result<[bool; 7], Error> {
    let mut working_days = [false; 7];
    for (index, value) in values.iter().enumerate() {
        let Ok(weekday) = Weekday::from_str(value.trim()) else {
            return Err(Error::UnknownWorkingDay {
                calendar: calendar.to_string(),
                index,
                value: clip(value),
            });
        };
        let slot = &mut working_days[weekday.num_days_from_monday() as usize];
        if *slot {
            return Err(Error::DuplicateWorkingDay {
                calendar: calendar.to_string(),
                index,
                value: clip(value),
            });
        }
        *slot = true;
    }
    if !working_days.contains(&true) {
        return Err(Error::NoWorkingTime {
            calendar: calendar.to_string(),
            field: "working_days",
        });
    }
    Ok(working_days)
}

fn parse_hours(calendar: &str, values: &[String]) -> Result<Vec<WorkingHours>, Error> {
    if values.len() > MAX_INTERVALS_PER_DAY {
        return Err(too_many(
            calendar,
            "hours",
            values.len(),
            MAX_INTERVALS_PER_DAY,
        ));
    }
    let mut parsed = Vec::with_capacity(values.len());
    for (index, value) in values.iter().enumerate() {
        let Some((start_minute, end_minute)) = parse_interval(value) else {
            return Err(Error::BadHours {
                calendar: calendar.to_string(),
                index,
                value: clip(value),
            });
        };
        if end_minute <= start_minute {
            return Err(Error::EmptyHours {
                calendar: calendar.to_string(),
                index,
                value: clip(value),
            });
        }
        let hours = WorkingHours {
            start_minute,
            end_minute,
        };
        parsed.push((hours, value));
    }
    parsed.sort();
    for pair in parsed.windows(2) {
        if pair[1].0.start_minute < pair[0].0.end_minute {
            return Err(Error::OverlappingHours {
                calendar: calendar.to_string(),
                first: clip(pair[0].1),
                second: clip(pair[1].1),
            });
        }
    }
    if parsed.is_empty() {
        return Err(Error::NoWorkingTime {
            calendar: calendar.to_string(),
            field: "hours",
        });
    }
    Ok(parsed.into_iter().map(|(hours, _)| hours).collect())
}

/// `HH:MM-HH:MM` → minutes after midnight of both ends.
fn parse_interval(value: &str) -> Option<(u16, u16)> {
    let (start, end) = value.split_once('-')?;
    Some((parse_minute_of_day(start)?, parse_minute_of_day(end)?))
}

/// `H:MM` or `HH:MM`, `00:00` to `24:00`.
fn parse_minute_of_day(value: &str) -> Option<u16> {
    let (hours, minutes) = value.trim().split_once(':')?;
    let digits = |text: &str| text.bytes().all(|byte| byte.is_ascii_digit());
    if !(1..=2).contains(&hours.len()) || minutes.len() != 2 || !digits(hours) || !digits(minutes) {
        return None;
    }
    let hours: u16 = hours.parse().ok()?;
    let minutes: u16 = minutes.parse().ok()?;
    let minute_of_day = hours * 60 + minutes;
    (minutes < 60 && minute_of_day <= MINUTES_PER_DAY).then_some(minute_of_day)
}

fn parse_holidays(calendar: &str, values: &[String]) -> Result<BTreeSet<NaiveDate>, Error> {
    if values.len() > MAX_HOLIDAYS {
        return Err(too_many(calendar, "holidays", values.len(), MAX_HOLIDAYS));
    }
    let mut holidays = BTreeSet::new();
    for (index, value) in values.iter().enumerate() {
        let Ok(date) = NaiveDate::parse_from_str(value.trim(), "%Y-%m-%d") else {
            return Err(Error::BadHoliday {
                calendar: calendar.to_string(),
                index,
                value: clip(value),
            });
        };
        holidays.insert(date);
    }
    Ok(holidays)
}

fn too_many(calendar: &str, field: &'static str, count: usize, limit: usize) -> Error {
    Error::TooManyEntries {
        calendar: calendar.to_string(),
        field,
        count,
        limit,
    }
}

/// At most [`MAX_ERROR_VALUE_CHARS`] characters of a value, for an error message.
fn clip(value: &str) -> String {
    match value.char_indices().nth(MAX_ERROR_VALUE_CHARS) {
        Some((end, _)) => format!("{}…", &value[..end]),
        None => value.to_string(),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const WEEKDAYS: [&str; 5] = ["mon", "tue", "wed", "thu", "fri"];
    const EVERY_DAY: [&str; 7] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];

    fn calendar(time_zone: &str, days: &[&str], hours: &[&str], holidays: &[&str]) -> Calendar {
        let strings = |values: &[&str]| values.iter().map(|value| value.to_string()).collect();
        let spec = CalendarSpec {
            time_zone: time_zone.to_string(),
            working_days: strings(days),
            hours: strings(hours),
            holidays: strings(holidays),
        };
        Calendar::from_spec("test", &spec).unwrap()
    }

    fn berlin_office(hours: &str, holidays: &[&str]) -> Calendar {
        calendar("Europe/Berlin", &WEEKDAYS, &[hours], holidays)
    }

    fn berlin_every_day(hours: &str) -> Calendar {
        calendar("Europe/Berlin", &EVERY_DAY, &[hours], &[])
    }

    fn utc(text: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(text)
            .unwrap()
            .with_timezone(&Utc)
    }

    fn hours(count: u64) -> Duration {
        Duration::from_secs(count * 3600)
    }

    fn minutes(count: u64) -> Duration {
        Duration::from_secs(count * 60)
    }

    #[test]
    fn four_business_hours_from_friday_16_00_fall_due_on_monday_11_00() {
        // The issue's example needs nine working hours a day: 08:00–17:00.
        // Fri 2026-01-16 16:00 CET (15:00Z): 1 h to 17:00, then Mon 2026-01-19 08:00 CET
        // (07:00Z) + 3 h = 11:00 CET = 10:00Z.
        let office = berlin_office("08:00-17:00", &[]);
        let due = office.add_business(utc("2026-01-16T15:00:00Z"), hours(4));
        assert_eq!(due, Ok(utc("2026-01-19T10:00:00Z")));
        // With 09:00–17:00 the three Monday hours end at 12:00 CET (11:00Z).
        let office = berlin_office("09:00-17:00", &[]);
        let due = office.add_business(utc("2026-01-16T15:00:00Z"), hours(4));
        assert_eq!(due, Ok(utc("2026-01-19T11:00:00Z")));
    }

    #[test]
    fn a_holiday_on_monday_pushes_the_deadline_to_tuesday() {
        let office = berlin_office("08:00-17:00", &["2026-01-19"]);
        let due = office.add_business(utc("2026-01-16T15:00:00Z"), hours(4));
        assert_eq!(due, Ok(utc("2026-01-20T10:00:00Z")));
    }

    #[test]
    fn split_working_hours_skip_the_lunch_break() {
        // Mon 2026-01-19 11:00 CET (10:00Z) + 3 h: 1.5 h to 12:30, then 13:30 + 1.5 h = 15:00
        // CET = 14:00Z.
        let office = calendar(
            "Europe/Berlin",
            &WEEKDAYS,
            &["13:30-17:00", "09:00-12:30"],
            &[],
        );
        let due = office.add_business(utc("2026-01-19T10:00:00Z"), hours(3));
        assert_eq!(due, Ok(utc("2026-01-19T14:00:00Z")));
        let lunch = office.next_working_instant(utc("2026-01-19T11:45:00Z"));
        assert_eq!(lunch, Ok(utc("2026-01-19T12:30:00Z")));
    }

    #[test]
    fn counting_starts_at_the_next_working_instant() {
        let office = berlin_office("09:00-17:00", &[]);
        // Sat 2026-01-17 10:00 CET + 1 h → Mon 10:00 CET = 09:00Z.
        let due = office.add_business(utc("2026-01-17T09:00:00Z"), hours(1));
        assert_eq!(due, Ok(utc("2026-01-19T09:00:00Z")));
        // Mon 06:00 CET + 30 min → 09:30 CET = 08:30Z.
        let due = office.add_business(utc("2026-01-19T05:00:00Z"), minutes(30));
        assert_eq!(due, Ok(utc("2026-01-19T08:30:00Z")));
        // Fri 17:00 CET (16:00Z) is the end of the week's working time.
        let next = office.next_working_instant(utc("2026-01-16T16:00:00Z"));
        assert_eq!(next, Ok(utc("2026-01-19T08:00:00Z")));
        let inside = utc("2026-01-19T09:00:00Z");
        assert_eq!(office.next_working_instant(inside), Ok(inside));
    }

    #[test]
    fn zero_duration_is_due_at_the_start_and_an_exact_fit_at_the_interval_end() {
        let office = berlin_office("09:00-17:00", &[]);
        let saturday = utc("2026-01-17T09:00:00Z");
        assert_eq!(office.add_business(saturday, Duration::ZERO), Ok(saturday));
        // Fri 16:00 CET + 1 h is due Fri 17:00 CET, not Mon 09:00.
        let due = office.add_business(utc("2026-01-16T15:00:00Z"), hours(1));
        assert_eq!(due, Ok(utc("2026-01-16T16:00:00Z")));
    }

    #[test]
    fn office_hours_stay_local_across_both_daylight_saving_changes() {
        let office = berlin_office("09:00-17:00", &[]);
        // Fri 2026-03-27 16:00 CET (15:00Z) + 4 h: 1 h on Friday; Berlin springs forward on
        // Sun 03-29; Mon 09:00 CEST = 07:00Z + 3 h = 10:00Z (12:00 CEST).
        let due = office.add_business(utc("2026-03-27T15:00:00Z"), hours(4));
        assert_eq!(due, Ok(utc("2026-03-30T10:00:00Z")));
        // Fri 2026-10-23 16:00 CEST (14:00Z) + 4 h: 1 h on Friday; it falls back on Sun 10-25;
        // Mon 09:00 CET = 08:00Z + 3 h = 11:00Z (12:00 CET).
        let due = office.add_business(utc("2026-10-23T14:00:00Z"), hours(4));
        assert_eq!(due, Ok(utc("2026-10-26T11:00:00Z")));
    }

    #[test]
    fn a_calendar_that_never_stops_counts_elapsed_time_across_the_changes() {
        let always = berlin_every_day("00:00-24:00");
        // Sat 2026-03-28 22:00 CET (21:00Z) + 24 h = Sun 21:00Z, which the clock shows as
        // 23:00 CEST: the day from 00:00 to 24:00 local lasted 23 hours.
        let due = always.add_business(utc("2026-03-28T21:00:00Z"), hours(24));
        assert_eq!(due, Ok(utc("2026-03-29T21:00:00Z")));
        let sunday =
            always.business_between(utc("2026-03-28T23:00:00Z"), utc("2026-03-29T22:00:00Z"));
        assert_eq!(sunday, Ok(hours(23)));
        // Sat 2026-10-24 22:00 CEST (20:00Z) + 24 h = Sun 20:00Z = 21:00 CET; that Sunday,
        // 00:00 CEST (10-24 22:00Z) to 24:00 CET (10-25 23:00Z), lasted 25 hours.
        let due = always.add_business(utc("2026-10-24T20:00:00Z"), hours(24));
        assert_eq!(due, Ok(utc("2026-10-25T20:00:00Z")));
        let sunday =
            always.business_between(utc("2026-10-24T22:00:00Z"), utc("2026-10-25T23:00:00Z"));
        assert_eq!(sunday, Ok(hours(25)));
    }

    #[test]
    fn a_night_shift_loses_the_skipped_hour_when_the_clock_springs_forward() {
        let night = berlin_every_day("00:00-06:00");
        // Sun 2026-03-29 00:00 CET = 03-28 23:00Z; 06:00 CEST = 04:00Z: five working hours.
        let midnight = utc("2026-03-28T23:00:00Z");
        assert_eq!(
            night.add_business(midnight, hours(5)),
            Ok(utc("2026-03-29T04:00:00Z"))
        );
        // Half an hour more is Mon 00:00 CEST (03-29 22:00Z) + 30 min.
        let due = night.add_business(midnight, hours(5) + minutes(30));
        assert_eq!(due, Ok(utc("2026-03-29T22:30:00Z")));
        let between =
            night.business_between(utc("2026-03-28T12:00:00Z"), utc("2026-03-29T12:00:00Z"));
        assert_eq!(between, Ok(hours(5)));
    }

    #[test]
    fn a_night_shift_works_the_repeated_hour_when_the_clock_falls_back() {
        let night = berlin_every_day("00:00-06:00");
        // Sun 2026-10-25 00:00 CEST = 10-24 22:00Z; 06:00 CET = 05:00Z: seven working hours.
        let midnight = utc("2026-10-24T22:00:00Z");
        assert_eq!(
            night.add_business(midnight, hours(7)),
            Ok(utc("2026-10-25T05:00:00Z"))
        );
        // After six working hours the clock reads only 05:00 CET (04:00Z).
        assert_eq!(
            night.add_business(midnight, hours(6)),
            Ok(utc("2026-10-25T04:00:00Z"))
        );
        let between =
            night.business_between(utc("2026-10-24T12:00:00Z"), utc("2026-10-25T12:00:00Z"));
        assert_eq!(between, Ok(hours(7)));
    }

    #[test]
    fn a_boundary_the_clock_skips_is_the_instant_of_the_change() {
        // On 2026-03-29 Berlin's clock jumps from 02:00 CET to 03:00 CEST at 01:00Z.
        // 02:30–04:00 becomes [01:00Z, 02:00Z): one hour instead of one and a half.
        let early = berlin_every_day("02:30-04:00");
        let next = early.next_working_instant(utc("2026-03-29T00:00:00Z"));
        assert_eq!(next, Ok(utc("2026-03-29T01:00:00Z")));
        let day = early.business_between(utc("2026-03-29T00:00:00Z"), utc("2026-03-29T12:00:00Z"));
        assert_eq!(day, Ok(hours(1)));
        let day_before =
            early.business_between(utc("2026-03-28T00:00:00Z"), utc("2026-03-28T12:00:00Z"));
        assert_eq!(day_before, Ok(minutes(90)));
        // 02:00–02:30 lies wholly in the skipped hour: no work that day; the next is Mon 02:00
        // CEST = 00:00Z.
        let skipped = berlin_every_day("02:00-02:30");
        let next = skipped.next_working_instant(utc("2026-03-29T00:00:00Z"));
        assert_eq!(next, Ok(utc("2026-03-30T00:00:00Z")));
        let two_days =
            skipped.business_between(utc("2026-03-28T12:00:00Z"), utc("2026-03-30T12:00:00Z"));
        assert_eq!(two_days, Ok(minutes(30)));
    }

    #[test]
    fn a_boundary_the_clock_shows_twice_is_its_first_occurrence() {
        // On 2026-10-25 Berlin's clock goes from 03:00 CEST back to 02:00 CET at 01:00Z, so
        // 02:00–03:00 local happens at 00:00–01:00Z and again at 01:00–02:00Z.
        // 02:00–02:30 is [00:00Z, 00:30Z): worked once.
        let repeated = berlin_every_day("02:00-02:30");
        let day =
            repeated.business_between(utc("2026-10-24T12:00:00Z"), utc("2026-10-25T12:00:00Z"));
        assert_eq!(day, Ok(minutes(30)));
        // 02:10 CET (01:10Z, the second 02:10) is not working time; the next is Mon 02:00 CET.
        let next = repeated.next_working_instant(utc("2026-10-25T01:10:00Z"));
        assert_eq!(next, Ok(utc("2026-10-26T01:00:00Z")));
        // 02:30–04:00 runs from the first 02:30 (00:30Z) to 04:00 CET (03:00Z): 2.5 hours.
        let early = berlin_every_day("02:30-04:00");
        let day = early.business_between(utc("2026-10-24T12:00:00Z"), utc("2026-10-25T12:00:00Z"));
        assert_eq!(day, Ok(minutes(150)));
    }

    #[test]
    fn a_new_york_office_with_independence_day_and_daylight_saving() {
        let office = calendar(
            "America/New_York",
            &WEEKDAYS,
            &["09:00-17:00"],
            &["2026-07-03"],
        );
        // Thu 2026-07-02 15:00 EDT (19:00Z) + 8 h: 2 h on Thursday, Friday is the observed
        // holiday, Mon 07-06 09:00 EDT (13:00Z) + 6 h = 19:00Z.
        let due = office.add_business(utc("2026-07-02T19:00:00Z"), hours(8));
        assert_eq!(due, Ok(utc("2026-07-06T19:00:00Z")));
        // Fri 2026-03-06 16:00 EST (21:00Z) + 2 h: 1 h on Friday; clocks spring forward on
        // Sun 03-08; Mon 09:00 EDT = 13:00Z + 1 h = 14:00Z.
        let due = office.add_business(utc("2026-03-06T21:00:00Z"), hours(2));
        assert_eq!(due, Ok(utc("2026-03-09T14:00:00Z")));
    }

    #[test]
    fn a_year_of_office_hours() {
        let office = berlin_office("09:00-17:00", &[]);
        // Mon 2026-01-05 09:00 CET + 52 weeks of 40 hours ends on the 52nd Friday,
        // 2027-01-01, at 17:00 CET (16:00Z); one hour more is Mon 2027-01-04 10:00 CET.
        let start = utc("2026-01-05T08:00:00Z");
        let due = office.add_business(start, hours(52 * 40)).unwrap();
        assert_eq!(due, utc("2027-01-01T16:00:00Z"));
        let due = office.add_business(start, hours(52 * 40 + 1));
        assert_eq!(due, Ok(utc("2027-01-04T09:00:00Z")));
        assert_eq!(
            office.business_between(start, utc("2027-01-01T16:00:00Z")),
            Ok(hours(2080))
        );
        let always = berlin_every_day("00:00-24:00");
        let due = always.add_business(start, hours(365 * 24));
        assert_eq!(due, Ok(start + TimeDelta::days(365)));
    }

    #[test]
    fn durations_and_spans_beyond_the_horizon_are_refused() {
        let office = berlin_office("09:00-17:00", &[]);
        let start = utc("2026-01-05T08:00:00Z");
        // Eleven years of 40-hour weeks need more than ten calendar years.
        let refused = office.add_business(start, hours(11 * 52 * 40));
        assert!(
            matches!(refused, Err(Error::BeyondHorizon { .. })),
            "{refused:?}"
        );
        let refused = office.add_business(start, Duration::MAX);
        assert!(
            matches!(refused, Err(Error::BeyondHorizon { .. })),
            "{refused:?}"
        );
        assert!(office.add_business(start, hours(9 * 52 * 40)).is_ok());
        let refused = office.business_between(start, utc("2037-01-01T00:00:00Z"));
        assert!(
            matches!(refused, Err(Error::SpanTooLong { .. })),
            "{refused:?}"
        );
        let backwards = office.business_between(start, utc("2025-01-01T00:00:00Z"));
        assert_eq!(backwards, Ok(Duration::ZERO));
    }

    #[test]
    fn a_spec_is_read_from_json() {
        let spec: CalendarSpec = serde_json::from_str(
            r#"{"time_zone": "Europe/Berlin", "working_days": ["mon","tue","wed","thu","fri"],
                "hours": ["09:00-17:00"], "holidays": ["2026-12-25", "2026-12-26"]}"#,
        )
        .unwrap();
        let berlin = Calendar::from_spec("berlin", &spec).unwrap();
        assert_eq!(berlin.name(), "berlin");
        assert_eq!(berlin.time_zone(), chrono_tz::Europe::Berlin);
        assert!(!berlin.is_working_day(NaiveDate::from_ymd_opt(2026, 12, 25).unwrap()));
        assert!(berlin.is_working_day(NaiveDate::from_ymd_opt(2026, 12, 24).unwrap()));
        let unknown = serde_json::from_str::<CalendarSpec>(
            r#"{"time_zone": "UTC", "working_days": [], "hours": [], "timezone": "UTC"}"#,
        );
        assert!(unknown.is_err());
    }

    /// Builds a calendar from `json` merged over a valid spec and expects `message`.
    fn check_error(json: serde_json::Value, message: &str) {
        let mut spec = serde_json::json!({
            "time_zone": "Europe/Berlin", "working_days": ["mon"], "hours": ["09:00-17:00"]
        });
        for (key, value) in json.as_object().unwrap() {
            spec[key] = value.clone();
        }
        let spec: CalendarSpec = serde_json::from_value(spec).unwrap();
        let error = Calendar::from_spec("office", &spec).unwrap_err();
        assert_eq!(error.to_string(), message);
    }

    #[test]
    fn spec_errors_name_the_field_and_say_what_to_write() {
        use serde_json::json;
        check_error(
            json!({"time_zone": "berlin"}),
            "calendar `office`: time_zone: unknown time zone `berlin`; write an IANA time zone \
             name such as `Europe/Berlin` or `America/New_York`; did you mean `Europe/Berlin`?",
        );
        check_error(
            json!({"time_zone": "Mars/Olympus"}),
            "calendar `office`: time_zone: unknown time zone `Mars/Olympus`; write an IANA time \
             zone name such as `Europe/Berlin` or `America/New_York`",
        );
        check_error(
            json!({"working_days": ["mon", "funday"]}),
            "calendar `office`: working_days[1]: `funday` is not a day of the week; write mon, \
             tue, wed, thu, fri, sat or sun",
        );
        check_error(
            json!({"working_days": ["mon", "Monday"]}),
            "calendar `office`: working_days[1]: `Monday` is listed twice",
        );
        check_error(
            json!({"working_days": []}),
            "calendar `office`: no working time, because working_days is empty",
        );
        check_error(
            json!({"hours": []}),
            "calendar `office`: no working time, because hours is empty",
        );
        check_error(
            json!({"hours": ["9am-5pm"]}),
            "calendar `office`: hours[0]: `9am-5pm` is not a time interval; write HH:MM-HH:MM in \
             local time, such as `09:00-17:00` (`24:00` may end an interval)",
        );
        check_error(
            json!({"hours": ["09:00-17:60"]}),
            "calendar `office`: hours[0]: `09:00-17:60` is not a time interval; write HH:MM-HH:MM \
             in local time, such as `09:00-17:00` (`24:00` may end an interval)",
        );
        check_error(
            json!({"hours": ["22:00-06:00"]}),
            "calendar `office`: hours[0]: `22:00-06:00` does not end after it starts; an interval \
             cannot cross midnight, so write `22:00-24:00` and `00:00-06:00` instead",
        );
        check_error(
            json!({"hours": ["13:00-17:00", "09:00-13:30"]}),
            "calendar `office`: hours: `09:00-13:30` and `13:00-17:00` overlap; list each working \
             minute once",
        );
        check_error(
            json!({"holidays": ["2026-12-25", "25.12.2026"]}),
            "calendar `office`: holidays[1]: `25.12.2026` is not a date; write YYYY-MM-DD, such as \
             `2026-12-25`",
        );
        let too_many: Vec<String> = (0..401).map(|day| format!("2026-01-01+{day}")).collect();
        check_error(
            json!({"holidays": too_many}),
            "calendar `office`: holidays has 401 entries; at most 400 are allowed",
        );
    }

    #[test]
    fn touching_intervals_and_24_00_are_accepted() {
        let split = calendar("UTC", &EVERY_DAY, &["00:00-12:00", "12:00-24:00"], &[]);
        let start = utc("2026-05-01T07:00:00Z");
        assert_eq!(
            split.add_business(start, hours(48)),
            Ok(start + TimeDelta::hours(48))
        );
        let spec = CalendarSpec {
            time_zone: "UTC".into(),
            working_days: vec!["mon".into()],
            hours: vec!["09:00-17:00".into()],
            holidays: Vec::new(),
        };
        let long_name = "n".repeat(MAX_NAME_BYTES + 1);
        assert!(matches!(
            Calendar::from_spec(&long_name, &spec),
            Err(Error::BadName { .. })
        ));
    }

    /// The calendars the properties run over: lunch breaks and holidays, a night shift that
    /// spans both changes, a boundary inside the changeover hour, and another zone.
    fn property_calendars() -> Vec<Calendar> {
        vec![
            calendar(
                "Europe/Berlin",
                &WEEKDAYS,
                &["09:00-12:30", "13:30-17:00"],
                &["2026-04-03", "2026-04-06", "2026-12-25", "2027-01-01"],
            ),
            berlin_every_day("00:00-06:00"),
            berlin_every_day("02:30-04:00"),
            calendar(
                "America/New_York",
                &["mon", "wed", "sat"],
                &["07:15-19:45"],
                &["2026-07-04"],
            ),
        ]
    }

    /// Instants from 2026-01-01 to 2027-12-31, whole seconds.
    fn instant() -> impl Strategy<Value = DateTime<Utc>> {
        (1_767_225_600i64..1_830_211_200)
            .prop_map(|seconds| DateTime::from_timestamp(seconds, 0).unwrap())
    }

    /// Up to 1,000 hours, in seconds.
    fn duration() -> impl Strategy<Value = Duration> {
        (0u64..3_600_000).prop_map(Duration::from_secs)
    }

    proptest! {
        #[test]
        fn adding_twice_is_adding_the_sum(which in 0usize..4, start in instant(), first in duration(), second in duration()) {
            let calendar = &property_calendars()[which];
            let stepwise = calendar.add_business(calendar.add_business(start, first).unwrap(), second);
            prop_assert_eq!(stepwise, calendar.add_business(start, first + second));
        }

        #[test]
        fn the_time_between_start_and_due_is_the_duration(which in 0usize..4, start in instant(), duration in duration()) {
            let calendar = &property_calendars()[which];
            let start = calendar.next_working_instant(start).unwrap();
            let due = calendar.add_business(start, duration).unwrap();
            prop_assert_eq!(calendar.business_between(start, due), Ok(duration));
            prop_assert!(due >= start);
        }

        #[test]
        fn a_calendar_without_breaks_counts_elapsed_time(start in instant(), duration in duration()) {
            let always = berlin_every_day("00:00-24:00");
            let due = always.add_business(start, duration).unwrap();
            prop_assert_eq!(due, start + TimeDelta::from_std(duration).unwrap());
        }
    }
}
