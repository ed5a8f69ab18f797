//! `[errors]` (how refusals are answered) and `[log]` (the access and audit logs).

use std::path::Path;

use super::{Checker, Section};
use crate::model::{AccessLogTarget, ErrorMode, Errors, Log, LogFormat, Upstream401};

/// Keys of `[errors]`.
pub(super) const ERRORS_KEYS: &[&str] = &["mode", "pages", "upstream_401"];
/// Keys of `[log]`.
pub(super) const LOG_KEYS: &[&str] = &["access", "format", "audit"];
/// Values of `errors.mode`.
const ERROR_MODES: &[&str] = &["custom", "detailed", "detailed_local_only"];
/// Values of `errors.upstream_401`.
const UPSTREAM_401: &[&str] = &["pass_through", "replace"];
/// Values of `log.format`.
const LOG_FORMATS: &[&str] = &["w3c", "json"];

impl Checker<'_> {
    /// `[errors]`.
    pub(super) fn errors(&mut self, s: &Section<'_, '_>) -> Errors {
        let mode = match self.choice(s, "mode", ERROR_MODES) {
            Some("custom") => ErrorMode::Custom,
            Some("detailed") => ErrorMode::Detailed,
            _ => ErrorMode::DetailedLocalOnly,
        };
        let pages = s.get("pages").and_then(|v| {
            let text = self.string(&s.path("pages"), v)?;
            let path = self.resolve(text);
            if path.is_dir() {
                Some(path)
            } else if path.exists() {
                self.report(
                    s.path("pages"),
                    Some(v.span()),
                    format!("{} is not a folder", path.display()),
                );
                None
            } else {
                self.report(
                    s.path("pages"),
                    Some(v.span()),
                    format!("folder not found: {}", path.display()),
                );
                None
            }
        });
        let upstream_401 = match self.choice(s, "upstream_401", UPSTREAM_401) {
            Some("replace") => Upstream401::Replace,
            _ => Upstream401::PassThrough,
        };
        Errors {
            mode,
            pages,
            upstream_401,
        }
    }

    /// `[log]`.
    pub(super) fn log(&mut self, s: &Section<'_, '_>) -> Log {
        let access = match s.get("access") {
            None => AccessLogTarget::Stdout,
            Some(v) => match self.string(&s.path("access"), v) {
                Some("-") | None => AccessLogTarget::Stdout,
                Some("off") => AccessLogTarget::Off,
                Some("") => {
                    self.report(
                        s.path("access"),
                        Some(v.span()),
                        "must be \"-\" (stdout), \"off\" or a file path",
                    );
                    AccessLogTarget::Stdout
                }
                Some(text) => {
                    let path = self.resolve(text);
                    let parent = path
                        .parent()
                        .filter(|p| !p.as_os_str().is_empty())
                        .unwrap_or(Path::new("."));
                    if path.is_dir() {
                        self.report(
                            s.path("access"),
                            Some(v.span()),
                            format!("{} is a folder, not a file", path.display()),
                        );
                    } else if !parent.is_dir() {
                        self.report(
                            s.path("access"),
                            Some(v.span()),
                            format!(
                                "the folder of the access log does not exist: {}",
                                parent.display()
                            ),
                        );
                    }
                    AccessLogTarget::File(path)
                }
            },
        };
        let format = match self.choice(s, "format", LOG_FORMATS) {
            Some("json") => LogFormat::Json,
            _ => LogFormat::W3c,
        };
        let audit = s.get("audit").and_then(|v| {
            let text = self.string(&s.path("audit"), v)?;
            let path = self.resolve(text);
            let parent = path
                .parent()
                .filter(|p| !p.as_os_str().is_empty())
                .unwrap_or(Path::new("."));
            if text.is_empty() || path.is_dir() {
                self.report(
                    s.path("audit"),
                    Some(v.span()),
                    "must be the path of a file (JSON lines)",
                );
                None
            } else if !parent.is_dir() {
                self.report(
                    s.path("audit"),
                    Some(v.span()),
                    format!(
                        "the folder of the audit log does not exist: {}",
                        parent.display()
                    ),
                );
                None
            } else {
                Some(path)
            }
        });
        Log {
            access,
            format,
            audit,
        }
    }
}
