//! The console's HTML, server-rendered with maud (which escapes every
//! interpolated value for its HTML context). Values from jobs, headers and
//! Octopods answers pass [`mask::shown`] first; links are built with
//! [`link`], which percent-encodes each parameter. No script anywhere.

use maud::{DOCTYPE, Markup, html};
use time::OffsetDateTime;

use super::{
    auth::Who,
    dead::{Action, Index, Plan, Row, State},
    mask::{self, FIELD},
};
use crate::{events::timestamp, ops::dlq::Source, ops::overview::Overview};

/// A path with its query, each parameter percent-encoded.
pub(crate) fn link(path: &str, params: &[(&str, &str)]) -> String {
    if params.is_empty() {
        return path.to_owned();
    }
    let mut q = form_urlencoded::Serializer::new(String::new());
    for (k, v) in params {
        q.append_pair(k, v);
    }
    format!("{path}?{}", q.finish())
}

fn when(t: Option<OffsetDateTime>) -> String {
    t.map(timestamp).unwrap_or_else(|| "-".into())
}

pub(crate) fn layout(title: &str, who: Option<&Who>, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · octopods-worker console" }
                link rel="stylesheet" href="/static/console.css";
            }
            body {
                header {
                    strong { "octopods-worker" }
                    @if let Some(who) = who {
                        nav {
                            a href="/channels" { "Channels" }
                            a href="/replies" { "Replies" }
                            a href="/dead?source=dead" { "Dead letters" }
                            a href="/dead?source=unroutable" { "Unroutable" }
                        }
                        span.who { (who.user) " (" (who.role.as_str()) ")" }
                        @if let Some(csrf) = &who.csrf {
                            form.inline method="post" action="/logout" {
                                input type="hidden" name="csrf" value=(csrf);
                                button type="submit" { "Log out" }
                            }
                        }
                    }
                }
                main { h1 { (title) } (body) }
            }
        }
    }
}

pub(crate) fn login(error: Option<&str>) -> Markup {
    layout(
        "Log in",
        None,
        html! {
            @if let Some(e) = error { p.error role="alert" { (e) } }
            form method="post" action="/login" {
                label { "User " input type="text" name="name" autocomplete="username" required; }
                label { "Password " input type="password" name="password" autocomplete="current-password" required; }
                button type="submit" { "Log in" }
            }
        },
    )
}

pub(crate) fn message(title: &str, who: &Who, text: &str, back: &str) -> Markup {
    layout(
        title,
        Some(who),
        html! {
            p { (text) }
            p { a href=(back) { "Back" } }
        },
    )
}

fn csrf_field(who: &Who) -> Markup {
    html! { @if let Some(c) = &who.csrf { input type="hidden" name="csrf" value=(c); } }
}

pub(crate) fn channels(who: &Who, o: &Overview) -> Markup {
    let op = who.may_change();
    layout(
        "Channels",
        Some(who),
        html! {
            p.asof { "As of " (timestamp(o.as_of)) " (read now from the control stream and the broker)." }
            table {
                thead { tr {
                    th { "Channel" } th { "State" } th { "Rate /s" } th { "Burst" } th { "Source" }
                    th { "Ready" } th { "Consumers" } th { "Status checks waiting" }
                    @if op { th { "Actions" } }
                } }
                tbody {
                    @for c in &o.channels {
                        tr data-channel=(c.name) {
                            td { (c.name) }
                            td.state {
                                @match &c.paused {
                                    Some(p) => {
                                        span.paused { "paused" }
                                        " since " (mask::shown(&p.since, 64)) " by " (mask::shown(&p.by, 200))
                                        @if let Some(r) = &p.reason { ": " (mask::shown(r, FIELD)) }
                                    }
                                    None => span.running { "running" },
                                }
                            }
                            td { (c.rate) } td { (c.burst) } td { (c.source) }
                            td { (dash(c.ready)) } td { (dash(c.consumers)) } td { (dash(c.status_waiting)) }
                            @if op {
                                td.actions {
                                    @let base = format!("/channels/{}", c.name);
                                    @if c.paused.is_some() {
                                        form.inline method="post" action=(format!("{base}/resume")) {
                                            (csrf_field(who)) button type="submit" { "Resume" }
                                        }
                                    } @else {
                                        form.inline method="post" action=(format!("{base}/pause")) {
                                            (csrf_field(who))
                                            input type="text" name="reason" placeholder="reason" maxlength="1000";
                                            button type="submit" { "Pause" }
                                        }
                                    }
                                    form.inline method="post" action=(format!("{base}/set-rate")) {
                                        (csrf_field(who))
                                        input type="number" name="rate" step="any" min="0" placeholder="rate/s" required;
                                        input type="number" name="burst" min="1" placeholder="burst";
                                        button type="submit" { "Set rate" }
                                    }
                                    form.inline method="post" action=(format!("{base}/clear")) {
                                        (csrf_field(who)) button type="submit" { "Clear" }
                                    }
                                }
                            }
                        }
                    }
                }
            }
            h2 { "Delay queues" }
            table {
                thead { tr { th { "Queue" } th { "Waiting" } } }
                tbody { @for (q, n) in &o.delay_queues { tr { td { (q) } td { (dash(*n)) } } } }
            }
        },
    )
}

/// The replies page: per channel, what the last period's customer
/// messages came to; the latest matched replies.
pub(crate) fn replies(who: &Who, s: &crate::ops::replies::Summary) -> Markup {
    let outcomes = ["matched", "ambiguous", "unmatched", "no_prompt", "expired"];
    let hours = s.period.as_secs() / 3600;
    layout(
        "Replies",
        Some(who),
        html! {
            p.asof { "As of " (timestamp(s.as_of)) ", the last " (hours) " hours of the prompt stream." }
            @if s.channels.is_empty() {
                p { "No channel tracks replies ([channels.replies] in the config)." }
            } @else {
                table {
                    thead { tr {
                        th { "Channel" } th { "Prompts sent" }
                        @for o in outcomes { th { (o.replace('_', " ")) } }
                    } }
                    tbody {
                        @for (name, c) in &s.channels {
                            tr data-channel=(name) {
                                td { (name) } td { (c.prompts) }
                                @for o in outcomes {
                                    td data-outcome=(o) { (c.outcomes.get(o).copied().unwrap_or(0)) }
                                }
                            }
                        }
                    }
                }
                h2 { "Latest replies" }
                @if s.recent.is_empty() {
                    p { "None in this period." }
                } @else {
                    table {
                        thead { tr { th { "Replied at" } th { "Channel" } th { "Job" } th { "Option" } th { "Matched by" } } }
                        tbody {
                            @for r in &s.recent {
                                tr {
                                    td { (mask::shown(&r.replied_at, 64)) } td { (mask::shown(&r.channel, 64)) }
                                    td { (mask::shown(&r.job_id, 200)) } td { (mask::shown(&r.option, 64)) }
                                    td { (mask::shown(&r.matched_by, 32)) }
                                }
                            }
                        }
                    }
                }
            }
        },
    )
}

fn dash(n: Option<u32>) -> String {
    n.map_or_else(|| "-".into(), |n| n.to_string())
}

fn source_title(source: Source) -> &'static str {
    match source {
        Source::Dead => "Dead letters",
        Source::Unroutable => "Unroutable jobs",
    }
}

fn as_of(who: &Who, index: &Index, stale: bool) -> Markup {
    html! {
        p.asof {
            "As of " (timestamp(index.as_of)) ": " (index.rows.len()) " messages in "
            (index.groups.len()) " groups (the queue was held " (format!("{:.1}", index.took.as_secs_f64())) " s to read them)."
            @if stale { strong { " Changed since by an action: refresh." } }
            form.inline method="post" action="/dead/refresh" {
                (csrf_field(who))
                input type="hidden" name="source" value=(index.source.as_str());
                button type="submit" { "Refresh" }
            }
        }
    }
}

fn scope_fields(who: &Who, source: Source, params: &[(&str, &str)]) -> Markup {
    html! {
        (csrf_field(who))
        input type="hidden" name="source" value=(source.as_str());
        @for (k, v) in params { input type="hidden" name=(k) value=(v); }
    }
}

pub(crate) fn groups(who: &Who, index: &Index, stale: bool) -> Markup {
    let source = index.source;
    layout(
        source_title(source),
        Some(who),
        html! {
            (as_of(who, index, stale))
            table.groups {
                thead { tr {
                    th { "Reason" } th { "Channel" } th { "Error" } th { "Count" } th { "Oldest" } th { "Newest" } th {}
                } }
                tbody {
                    @for g in &index.groups {
                        @let params = [("group", g.id.as_str())];
                        tr.group {
                            td { (g.why.as_str()) }
                            td { (mask::shown(g.channel_shown(), 200)) }
                            td.error { (mask::shown(&g.error, FIELD)) }
                            td.count { (g.count) }
                            td { (when(g.oldest)) } td { (when(g.newest)) }
                            td.actions {
                                a href=(link("/dead/list", &[("source", source.as_str()), params[0]])) { "Open" }
                                @if who.may_change() {
                                    form.inline method="post" action="/dead/replay" {
                                        (scope_fields(who, source, &params))
                                        button type="submit" { "Replay group" }
                                    }
                                    form.inline method="post" action="/dead/purge" {
                                        (scope_fields(who, source, &params))
                                        button type="submit" { "Export then purge" }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        },
    )
}

/// The list page's filters, as given.
#[derive(Debug, Default, Clone, serde::Deserialize)]
pub(crate) struct ListQuery {
    #[serde(default)]
    pub(crate) source: String,
    #[serde(default)]
    pub(crate) reason: String,
    #[serde(default)]
    pub(crate) channel: String,
    /// A group's id ([`Group::id`](super::dead::Group)), never its text.
    #[serde(default)]
    pub(crate) group: String,
    #[serde(default)]
    pub(crate) job_id: String,
    /// e.g. `1h`.
    #[serde(default)]
    pub(crate) older_than: String,
    #[serde(default)]
    pub(crate) page: usize,
}

pub(crate) const PAGE: usize = 50;

pub(crate) fn list(
    who: &Who,
    index: &Index,
    stale: bool,
    q: &ListQuery,
    rows: &[&Row],
    total: usize,
) -> Markup {
    let source = index.source;
    let pages = total.div_ceil(PAGE).max(1);
    let page = q.page.min(pages.saturating_sub(1));
    let keep = |page: usize| {
        let p = page.to_string();
        link(
            "/dead/list",
            &[
                ("source", source.as_str()),
                ("reason", &q.reason),
                ("channel", &q.channel),
                ("group", &q.group),
                ("job_id", &q.job_id),
                ("older_than", &q.older_than),
                ("page", &p),
            ],
        )
    };
    layout(
        source_title(source),
        Some(who),
        html! {
            (as_of(who, index, stale))
            form.filters method="get" action="/dead/list" {
                input type="hidden" name="source" value=(source.as_str());
                input type="hidden" name="group" value=(q.group);
                label { "Reason " input type="text" name="reason" value=(q.reason); }
                label { "Channel " input type="text" name="channel" value=(q.channel); }
                label { "Job id " input type="text" name="job_id" value=(q.job_id); }
                label { "Older than " input type="text" name="older_than" value=(q.older_than) placeholder="1h"; }
                button type="submit" { "Filter" }
            }
            @if let Some(g) = index.find(&q.group).and_then(|g| index.groups.get(g)) {
                p { "Error group: " code { (mask::shown(&g.error, FIELD)) } }
            }
            p.count { (total) " matching; page " (page.saturating_add(1)) " of " (pages) }
            form method="post" action="/dead/replay" {
                (scope_fields(who, source, &[]))
                table.rows {
                    thead { tr {
                        @if who.may_change() { th {} }
                        th { "Failed at" } th { "Job id" } th { "Channel" } th { "Error" } th { "Attempts" } th { "Replays" } th {}
                    } }
                    tbody {
                        @for r in rows {
                            @let print = format!("{:016x}", r.print);
                            tr.row {
                                @if who.may_change() { td { input type="checkbox" name="print" value=(print); } }
                                td { (when(r.failed_at)) }
                                td.job { (mask::shown(r.job_id.as_deref().unwrap_or("-"), 200)) }
                                td { (mask::shown(index.groups.get(r.group).and_then(|g| g.channel.as_deref()).unwrap_or("-"), 200)) }
                                td.error { (mask::shown(&r.error, FIELD)) }
                                td { (r.attempts) } td { (r.replays) }
                                td { a href=(link("/dead/message", &[("source", source.as_str()), ("print", &print)])) { "View" } }
                            }
                        }
                    }
                }
                @if who.may_change() { button type="submit" { "Replay selected" } }
            }
            nav.pages {
                @if page > 0 { a href=(keep(page.saturating_sub(1))) { "← Previous" } }
                @if page.saturating_add(1) < pages { a href=(keep(page.saturating_add(1))) { "Next →" } }
            }
        },
    )
}

pub(crate) struct Shown {
    pub(crate) summary: Vec<(&'static str, String)>,
    pub(crate) headers: Vec<(String, String)>,
    pub(crate) body: String,
    pub(crate) routing_key: String,
}

pub(crate) fn dead_message(who: &Who, source: Source, print: &str, m: &Shown) -> Markup {
    layout(
        "Dead letter",
        Some(who),
        html! {
            table.summary { tbody {
                @for (k, v) in &m.summary { tr { th { (k) } td { (v) } } }
                tr { th { "routing key" } td { (m.routing_key) } }
            } }
            @if who.may_change() {
                form method="post" action="/dead/replay" {
                    (scope_fields(who, source, &[("print", print)]))
                    button type="submit" { "Replay this message" }
                }
            }
            h2 { "Headers" }
            p.asof { "The history is in x-death (RabbitMQ's record of each dead-lettering), x-octopods-replays and x-octopods-first-attempt-at." }
            table.headers { tbody { @for (k, v) in &m.headers { tr { th { (k) } td { (v) } } } } }
            h2 { "Body" }
            pre.body { (m.body) }
            p { a href=(link("/dead", &[("source", source.as_str())])) { "Back to the groups" } }
        },
    )
}

pub(crate) fn plan(who: &Who, id: &str, p: &Plan, max_replays: u32) -> Markup {
    let s = &p.dry_run;
    layout(
        &format!("Confirm {}", p.kind.as_str()),
        Some(who),
        html! {
            p { "Scope: " (mask::shown(&p.what, FIELD)) }
            p.dryrun {
                "Dry run on the queue as it is now: "
                @match p.kind {
                    super::dead::Kind::Replay => {
                        strong.would { (s.acted) } " would be replayed"
                        "; " (s.skipped_over_cap) " skipped at max_replays (" (max_replays) ")"
                        "; " (s.skipped_no_channel) " skipped (channel not configured)."
                    }
                    super::dead::Kind::Purge => {
                        strong.would { (s.acted) } " would be exported to a backup file, then exactly those purged."
                    }
                }
            }
            form method="post" action=(format!("/plans/{id}/confirm")) {
                (csrf_field(who))
                button type="submit" { "Confirm " (p.kind.as_str()) }
            }
            p { a href=(link("/dead", &[("source", p.source.as_str())])) { "Cancel" } }
        },
    )
}

pub(crate) fn action(who: &Who, a: &Action) -> (Markup, bool) {
    let state = a.state();
    let running = matches!(state, State::Running { .. });
    let page = layout(
        &format!("{} ({})", a.plan.kind.as_str(), a.plan.user),
        Some(who),
        html! {
            p { "Scope: " (mask::shown(&a.plan.what, FIELD)) }
            p { "Started " (timestamp(a.started)) " by " (a.plan.user) }
            @match &state {
                State::Running { step, seen, done } => {
                    p.progress { (step) ": seen " (seen) ", done " (done) " …" }
                }
                State::Done { lines, backup } => {
                    h2.done { "Done" }
                    ul.summary { @for l in lines { li { (l) } } }
                    @if let Some(b) = backup {
                        @let name = b.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
                        p { "Backup: " a.backup href=(format!("/exports/{name}")) { (name) } " (also at " (b.display()) ")" }
                    }
                }
                State::Failed(e) => { p.error { "Failed: " (mask::shown(e, FIELD)) } }
            }
            p { a href=(link("/dead", &[("source", a.plan.source.as_str())])) { "Back to the groups" } }
        },
    );
    (page, running)
}
