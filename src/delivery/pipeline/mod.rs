//! What a delivery comes to, as a value: parse the job ([`job`]), check it
//! was not sent already ([`dedup`]), make its attempts ([`retry`]), and return
//! the [`Settlement`] for [`settle`](crate::delivery::settle) to carry out. Nothing here
//! publishes, acks or rejects.
//!
//! [`job`]: crate::job
//! [`dedup`]: crate::delivery::dedup

use lapin::BasicProperties;
use time::OffsetDateTime;
use tokio_util::sync::CancellationToken;
use tracing::{Span, info, warn};

use crate::{
    broker::headers::{History, Trust},
    delivery::attempts::{self, Final, Later, Target},
    delivery::channel::{ChannelState, Shared},
    delivery::dedup::Begin,
    delivery::settlement::{Context, Settlement},
    events::SentEvent,
    job::Job,
    observe::logging::escape,
    octopods::client::ChannelSender,
    octopods::status::Check,
    outcome::Via,
    outcome::{Failure, RetryCause},
};

/// One delivery as the pipeline sees it.
pub(crate) struct Delivered<'a> {
    pub(crate) body: &'a [u8],
    pub(crate) properties: &'a BasicProperties,
    /// The delivery's exported span (`Span::none()` with traces off).
    pub(crate) trace: &'a Span,
}

/// Decides what `delivery` comes to on `channel`, sending through Octopods.
pub(crate) async fn decide(
    delivery: Delivered<'_>,
    channel: &ChannelState,
    shared: &Shared,
    stop: &CancellationToken,
) -> Settlement {
    let sender = ChannelSender {
        client: &shared.client,
        key: &channel.key,
    };
    decide_with(delivery, channel, shared, stop, &sender).await
}

/// [`decide`] with any [`Sender`](crate::octopods::client::Sender) (a fake in tests).
pub(crate) async fn decide_with<S: crate::octopods::client::Sender>(
    delivery: Delivered<'_>,
    channel: &ChannelState,
    shared: &Shared,
    stop: &CancellationToken,
    sender: &S,
) -> Settlement {
    let name = channel.config.name.as_str();
    // Copies handed back carry what earlier copies spent (see
    // `Settler::hand_back`); past the limit the job is poison, as the
    // broker would have decided had it been nacked each time.
    let spent = crate::broker::headers::spent_deliveries(delivery.properties.headers().as_ref());
    if spent > shared.config.broker.delivery_limit {
        let failure = Failure::local(format!(
            "delivered {spent} times without settling (delivery limit {})",
            shared.config.broker.delivery_limit
        ));
        let echo = crate::job::Echo::read(delivery.body);
        return context(&delivery, shared, name, OffsetDateTime::now_utc()).dead_letter(
            crate::outcome::Reason::Poison,
            failure,
            echo,
            0,
        );
    }
    if let Some(header) = crate::broker::headers::too_deep(delivery.properties.headers().as_ref()) {
        let failure = Failure::local(format!(
            "header {header}: tables or arrays nested deeper than {} levels (dropped on receipt)",
            crate::broker::headers::MAX_NESTING
        ));
        let echo = crate::job::Echo::read(delivery.body);
        return context(&delivery, shared, name, OffsetDateTime::now_utc()).dead_letter(
            crate::outcome::Reason::Malformed,
            failure,
            echo,
            0,
        );
    }
    let now = OffsetDateTime::now_utc();
    let (history, trust) =
        History::read(delivery.properties, delivery.body, name, &channel.key, now);
    if trust == Trust::Forged {
        warn!("retry headers not written by this deployment were ignored");
        shared.metrics.forged_history(name);
    }
    let parsed = {
        let _validate = crate::observe::trace::stage_span("validate").entered();
        Job::parse(delivery.body, name, channel.config.provider)
    };
    let job = match parsed {
        Ok(job) => job,
        Err(rejection) => {
            if let Some(id) = &rejection.echo.job_id {
                Span::current().record("job_id", tracing::field::display(escape(id)));
                delivery.trace.record("octopods.job_id", id.as_str());
            }
            return context(&delivery, shared, name, now).dead_letter(
                rejection.reason,
                Failure::local(rejection.message),
                *rejection.echo,
                history.attempts.max(1),
            );
        }
    };
    let span = Span::current();
    span.record("job_id", tracing::field::display(escape(job.id.as_str())));
    delivery.trace.record("octopods.job_id", job.id.as_str());
    // `Phone` displays masked: +1555***4567.
    span.record("phone", tracing::field::display(&job.phone));
    if let Some(hook) = shared.fault {
        hook(job.id.as_str());
    }
    let claim = loop {
        match shared.dedup.begin(name, job.id.as_str()) {
            Begin::Go(claim) => break claim,
            Begin::Sent(kept) => match SentEvent::from_kept(&kept, &job, name) {
                Some(event) => {
                    info!("already sent by this worker; re-publishing its sent event instead");
                    shared.metrics.duplicate_suppressed(name);
                    return sent(&delivery, channel, shared, &event);
                }
                // Never written by `kept`: a bug, not a reason to lose the job.
                None => {
                    return context(&delivery, shared, name, now).dead_letter(
                        crate::outcome::Reason::Internal,
                        Failure::local("the remembered send of this job cannot be read"),
                        job.echo(),
                        history.attempts.max(1),
                    );
                }
            },
            // The same job is in flight on another delivery: wait for it.
            Begin::Wait(mut done) => tokio::select! {
                biased;
                () = stop.cancelled() => return Settlement::HandBack { why: "stopping while a copy of the job was in flight" },
                _ = done.changed() => {}
            },
        }
    };
    let target = Target {
        channel: name,
        limiter: &channel.limiter,
        open: &shared.open,
        flow: &shared.flow,
        stop,
    };
    let retry_config = &shared.config.retry;
    let (result, attempts) = attempts::attempt(
        &job,
        &target,
        history,
        sender,
        retry_config,
        &shared.metrics,
    )
    .await;
    match result {
        Final::Sent(receipt, via) => {
            shared.metrics.sent_via(name, via);
            let event = SentEvent::new(
                &job,
                name,
                receipt,
                attempts,
                via,
                OffsetDateTime::now_utc(),
            );
            // Remember before publishing: if the broker goes away now, the
            // redelivered job re-publishes this event instead of re-sending.
            // Cannot fail (strings and numbers); if it did, a redelivery
            // would send again rather than re-publish: still no job lost.
            if let Ok(kept) = event.kept() {
                claim.remember(kept);
            }
            sent(&delivery, channel, shared, &event)
        }
        Final::DeadLetter(reason, failure) => context(
            &delivery,
            shared,
            name,
            OffsetDateTime::now_utc(),
        )
        .dead_letter(reason, failure, job.echo(), attempts),
        Final::Delay(later) => delay(
            &context(&delivery, shared, name, now),
            &channel.key,
            history,
            attempts,
            retry_config,
            later,
        ),
        Final::HandBack => Settlement::HandBack {
            why: "stopping before this job's turn",
        },
    }
}

/// A pending status check (docs/contract.md §12): one poll, at a low-priority slot
/// of the channel's budget (sends first), and what it means.
pub(crate) async fn poll(
    delivery: Delivered<'_>,
    channel: &ChannelState,
    shared: &Shared,
    stop: &CancellationToken,
) -> Settlement {
    let name = channel.config.name.as_str();
    let Ok(check) = serde_json::from_slice::<Check>(delivery.body) else {
        return context(&delivery, shared, name, OffsetDateTime::now_utc()).dead_letter(
            crate::outcome::Reason::Malformed,
            Failure::local("not a status check"),
            crate::job::Echo::read(delivery.body),
            0,
        );
    };
    Span::current().record("job_id", tracing::field::display(escape(&check.job_id)));
    delivery
        .trace
        .record("octopods.job_id", check.job_id.as_str());
    tokio::select! {
        biased;
        () = stop.cancelled() => return Settlement::HandBack { why: "stopping before its poll" },
        () = shared.flow.until_open() => {}
    }
    let permit = tokio::select! {
        biased;
        () = stop.cancelled() => return Settlement::HandBack { why: "stopping before its poll" },
        p = channel.limiter.turn_low_priority(&shared.open) => p,
    };
    let (status, polled) = shared.client.status(&channel.key, &check.message_id).await;
    drop(permit);
    shared.metrics.status_polled(name, status);
    if status == Some(429) {
        // Octopods' rate limit holds back sends too, as a send's 429 would.
        channel.limiter.pause(std::time::Duration::from_secs(1));
    }
    if let crate::octopods::status::Polled::NoAnswer(why) = &polled {
        info!(error = %escape(why), "no status this time; asking again later");
    }
    let now = OffsetDateTime::now_utc();
    let decision = crate::octopods::status::decide(&check, &polled, now, &shared.config.status);
    context(&delivery, shared, name, now).status(decision.events, decision.next)
}

/// The settlement builders' view of this delivery.
fn context<'a>(
    delivery: &Delivered<'a>,
    shared: &'a Shared,
    channel: &'a str,
    now: OffsetDateTime,
) -> Context<'a> {
    Context {
        names: &shared.names,
        channel,
        job: delivery.properties,
        body: delivery.body,
        now,
    }
}

/// Publishing `event` (and, on a tracked channel, scheduling the message's
/// first status check).
fn sent(
    delivery: &Delivered<'_>,
    channel: &ChannelState,
    shared: &Shared,
    event: &SentEvent,
) -> Settlement {
    // A message_id that cannot be one path segment is never polled.
    let check = channel
        .config
        .track_status
        .then(|| Check::from(event))
        .filter(|c| crate::octopods::client::path_segment(&c.message_id).is_some());
    let first = first_check(check, shared);
    let name = channel.config.name.as_str();
    context(delivery, shared, name, OffsetDateTime::now_utc()).sent(
        &event.job_id,
        event.to_bytes(),
        first,
    )
}

/// A tracked message's first status check, after the schedule's first delay.
fn first_check(check: Option<Check>, shared: &Shared) -> Option<(Check, std::time::Duration)> {
    Some((check?, *shared.config.status.schedule.first()?))
}

/// The durable retry after this delivery's attempts: the next delay queue
/// (the paused-template queue for a paused template), and the history the
/// job carries there.
fn delay(
    ctx: &Context<'_>,
    key: &crate::config::ApiKey,
    before: History,
    attempts: u32,
    retry: &crate::config::RetryConfig,
    later: Later,
) -> Settlement {
    let wait = match later.cause {
        RetryCause::Paused => Some(retry.paused_delay),
        _ => attempts::pick_delay(&retry.delays, before.delayed, later.after),
    };
    let Some(wait) = wait else {
        return Settlement::HandBack {
            why: "no retry delays configured",
        };
    };
    let history = History {
        attempts,
        delayed: before.delayed.saturating_add(1),
        first_attempt_at: Some(before.first_attempt_at.unwrap_or(ctx.now)),
        template: later.via == Via::Template,
    };
    ctx.delay(key, history, wait, later.cause, later.failure)
}

#[cfg(test)]
mod tests;
