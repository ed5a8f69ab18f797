//! Typed value readers shared by every section (strings, numbers, durations, choices).

use std::ops::{Range, RangeInclusive};
use std::time::Duration;

use toml::de::DeValue;

use super::{Checker, Section, Value, type_name};
use crate::diagnostics::suggest;

/// The finest step counters and bans are kept in (Redis expiries are in milliseconds).
const MIN_DURATION: Duration = Duration::from_millis(1);
/// One day.
pub(super) const DAY: Duration = Duration::from_secs(24 * 60 * 60);

/// What a duration key allows, for its checks and messages.
pub(super) struct Within {
    /// Longest value allowed.
    pub(super) max: Duration,
    /// `max` as written in messages ("24h").
    pub(super) max_text: &'static str,
    /// The default as written in messages ("200ms").
    pub(super) example: &'static str,
    /// Why zero is refused, starting with the key ("an interval of 0 counts no requests").
    pub(super) zero: &'static str,
}

impl Checker<'_> {
    /// Reports "expected WHAT, found TYPE" unless `v` is an array; returns whether it is.
    pub(super) fn expect_array(&mut self, key: &str, v: &Value<'_>, what: &str) -> bool {
        if matches!(v.get_ref(), DeValue::Array(_)) {
            return true;
        }
        self.report(
            key,
            Some(v.span()),
            format!("expected {what}, found {}", type_name(v.get_ref())),
        );
        false
    }

    /// A string value, or a type error.
    pub(super) fn string<'v>(&mut self, key: &str, v: &'v Value<'_>) -> Option<&'v str> {
        match v.get_ref() {
            DeValue::String(s) => Some(s.as_ref()),
            other => {
                self.report(
                    key,
                    Some(v.span()),
                    format!("expected a string, found {}", type_name(other)),
                );
                None
            }
        }
    }

    /// An integer value, or a type error.
    pub(super) fn integer(&mut self, key: &str, v: &Value<'_>) -> Option<i64> {
        match v.get_ref() {
            DeValue::Integer(i) => match i64::from_str_radix(i.as_str(), i.radix()) {
                Ok(n) => Some(n),
                Err(_) => {
                    self.report(key, Some(v.span()), "integer is out of range");
                    None
                }
            },
            other => {
                self.report(
                    key,
                    Some(v.span()),
                    format!("expected an integer, found {}", type_name(other)),
                );
                None
            }
        }
    }

    /// A boolean value, or a type error.
    pub(super) fn boolean(&mut self, key: &str, v: &Value<'_>) -> Option<bool> {
        match v.get_ref() {
            DeValue::Boolean(b) => Some(*b),
            other => {
                self.report(
                    key,
                    Some(v.span()),
                    format!("expected true or false, found {}", type_name(other)),
                );
                None
            }
        }
    }

    /// An array of strings: each entry with its indexed key path and span; non-strings reported.
    pub(super) fn strings<'v>(
        &mut self,
        key: &str,
        v: &'v Value<'_>,
    ) -> Vec<(String, &'v str, Range<usize>)> {
        let DeValue::Array(items) = v.get_ref() else {
            self.report(
                key,
                Some(v.span()),
                format!("expected an array, found {}", type_name(v.get_ref())),
            );
            return Vec::new();
        };
        let mut out = Vec::new();
        for (i, item) in items.iter().enumerate() {
            let path = format!("{key}[{i}]");
            if let Some(s) = self.string(&path, item) {
                out.push((path, s, item.span()));
            }
        }
        out
    }

    /// `key` of section `s`: a PEM certificate file (a private CA), resolved against the config
    /// file's folder and read now; `None` when absent or unusable (reported).
    pub(super) fn cert_file(
        &mut self,
        s: &Section<'_, '_>,
        key: &str,
    ) -> Option<std::path::PathBuf> {
        let v = s.get(key)?;
        let text = self.string(&s.path(key), v)?;
        let path = self.resolve(text);
        self.check_cert(&s.path(key), &path, &v.span())
            .then_some(path)
    }

    /// A duration in humantime form (`"10s"`, `"5m"`), defaulted when absent.
    pub(super) fn duration(
        &mut self,
        s: &Section<'_, '_>,
        key: &str,
        default: Duration,
        zero_ok: bool,
    ) -> Duration {
        let Some(v) = s.get(key) else { return default };
        let path = s.path(key);
        let Some(text) = (match v.get_ref() {
            DeValue::String(t) => Some(t.as_ref()),
            other => {
                self.report(
                    &path,
                    Some(v.span()),
                    format!(
                        "expected a duration string such as \"10s\" or \"5m\", found {}",
                        type_name(other)
                    ),
                );
                None
            }
        }) else {
            return default;
        };
        match humantime::parse_duration(text) {
            Ok(d) if d.is_zero() && !zero_ok => {
                self.report(path, Some(v.span()), "must be longer than zero");
                default
            }
            Ok(d) => d,
            Err(e) => {
                self.report(
                    path,
                    Some(v.span()),
                    format!("\"{text}\" is not a duration ({e}); write it like \"10s\", \"5m\" or \"1h 30m\""),
                );
                default
            }
        }
    }

    /// One of `accepted`, defaulted (to `None`) when absent.
    pub(super) fn choice(
        &mut self,
        s: &Section<'_, '_>,
        key: &str,
        accepted: &[&'static str],
    ) -> Option<&'static str> {
        let v = s.get(key)?;
        let text = self.string(&s.path(key), v)?;
        match accepted.iter().find(|a| **a == text) {
            Some(a) => Some(*a),
            None => {
                self.bad_enum(s.path(key), v.span(), text, accepted);
                None
            }
        }
    }

    /// Reports a value outside an enumeration, listing what is accepted.
    pub(super) fn bad_enum(
        &mut self,
        key: String,
        span: Range<usize>,
        text: &str,
        accepted: &[&str],
    ) {
        let list = accepted
            .iter()
            .map(|a| format!("\"{a}\""))
            .collect::<Vec<_>>()
            .join(", ");
        self.report_suggest(
            key,
            Some(span),
            format!("unknown value \"{text}\"; accepted values: {list}"),
            suggest(text, accepted),
        );
    }

    /// An optional whole number of `key` in `range` ("must be from A to B (unit), not N").
    pub(super) fn optional_count(
        &mut self,
        s: &Section<'_, '_>,
        key: &str,
        range: RangeInclusive<u64>,
        unit: &str,
    ) -> Option<u64> {
        let v = s.get(key)?;
        let n = self.integer(&s.path(key), v)?;
        match u64::try_from(n) {
            Ok(n) if range.contains(&n) => Some(n),
            _ => {
                self.report(
                    s.path(key),
                    Some(v.span()),
                    format!(
                        "must be from {} to {} ({unit}), not {n}",
                        range.start(),
                        range.end()
                    ),
                );
                None
            }
        }
    }

    /// An integer within `range`, defaulted when absent; `unit` says what it counts.
    pub(super) fn bounded_int(
        &mut self,
        key: &str,
        v: Option<&Value<'_>>,
        default: u32,
        range: RangeInclusive<u32>,
        unit: &str,
    ) -> u32 {
        let Some(v) = v else { return default };
        let Some(n) = self.integer(key, v) else {
            return default;
        };
        match u32::try_from(n) {
            Ok(n) if range.contains(&n) => n,
            _ => {
                let off = if n == 0 && key.starts_with("dynamic.") {
                    "; to turn the limit off, set enabled = false"
                } else {
                    ""
                };
                self.report(
                    key,
                    Some(v.span()),
                    format!(
                        "must be from {} to {} ({unit}), not {n}{off}",
                        range.start(),
                        range.end()
                    ),
                );
                default
            }
        }
    }

    /// A duration from 1ms to `within.max`, defaulted when absent.
    pub(super) fn bounded_duration(
        &mut self,
        key: &str,
        v: Option<&Value<'_>>,
        default: Duration,
        within: &Within,
    ) -> Duration {
        let Some(v) = v else { return default };
        let allowed = format!(
            "from 1ms to {}, like \"{}\"",
            within.max_text, within.example
        );
        let text = match v.get_ref() {
            DeValue::String(t) => t.as_ref(),
            other => {
                self.report(
                    key,
                    Some(v.span()),
                    format!(
                        "expected a duration string {allowed}, found {}",
                        type_name(other)
                    ),
                );
                return default;
            }
        };
        let message = match humantime::parse_duration(text) {
            Ok(d) if d.is_zero() => format!("{}; write a duration {allowed}", within.zero),
            Ok(d) if d < MIN_DURATION => format!(
                "\"{text}\" is shorter than 1ms, the finest step Portcullis counts in; \
                 write a duration {allowed}"
            ),
            Ok(d) if d > within.max => format!(
                "\"{text}\" is longer than the {} allowed; write a duration {allowed}",
                within.max_text
            ),
            Ok(d) => return d,
            Err(e) => format!("\"{text}\" is not a duration ({e}); write one {allowed}"),
        };
        self.report(key, Some(v.span()), message);
        default
    }
}
