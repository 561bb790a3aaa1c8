//! What Octopods documents (`docs/octopods-api.md`) that every part of the
//! stand-in shares: the paths, the auth header, the timestamp format.

pub(crate) const PATH: &str = "/api/v1/whatsapp/interactive";
pub(crate) const MESSAGES_PATH: &str = "/api/v1/whatsapp/messages";
pub(crate) const TEMPLATES_PATH: &str = "/api/v1/whatsapp/templates";
pub(crate) const AUTH_HEADER: &str = "X-Octopods-Auth";

/// `2026-11-24T10:00:01.234Z`.
pub(crate) fn timestamp(t: time::OffsetDateTime) -> String {
    const MILLIS: &[time::format_description::FormatItem<'static>] = time::macros::format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z"
    );
    let utc = t.checked_to_offset(time::UtcOffset::UTC).unwrap_or(t);
    utc.format(MILLIS).unwrap_or_else(|_| utc.to_string())
}
