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
use tracing::{Span, info};

use crate::observe::emit::{DuplicateSuppressed, Emit, ForgedHistory};
use crate::{
    broker::headers::{History, Trust},
    delivery::attempts::{self, Final, Later, Target},
    delivery::channel::{ChannelState, Shared},
    delivery::dedup::{Begin, Claim},
    delivery::settlement::{Context, Settlement},
    events::SentEvent,
    job::Job,
    observe::logging::escape,
    octopods::client::ChannelSender,
    octopods::status::Check,
    outcome::Via,
    outcome::{Failure, RetryCause},
    replies::record::{Prompt, Record},
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
    let decision = Decision {
        name: channel.config.name.as_str(),
        delivery,
        channel,
        shared,
        stop,
        sender,
    };
    match decision.steps().await {
        Ok(settlement) => settlement,
        Err(early) => *early,
    }
}

/// A step's result: what the next step needs, or the settlement the job
/// comes to right here (boxed: a settlement is large, most steps pass).
type Step<T> = Result<T, Box<Settlement>>;

/// One job's decision, in steps that return early.
struct Decision<'a, S> {
    name: &'a str,
    delivery: Delivered<'a>,
    channel: &'a ChannelState,
    shared: &'a Shared,
    stop: &'a CancellationToken,
    sender: &'a S,
}

impl<S: crate::octopods::client::Sender> Decision<'_, S> {
    async fn steps(&self) -> Step<Settlement> {
        self.within_delivery_limit()?;
        self.headers_whole()?;
        let now = OffsetDateTime::now_utc();
        let history = self.history(now);
        let job = self.parse(now, &history)?;
        let claim = self.claim(&job, now, &history).await?;
        let target = Target {
            channel: self.name,
            limiter: &self.channel.limiter,
            open: &self.shared.open,
            health: &self.shared.health,
            stop: self.stop,
        };
        let (config, metrics) = (&self.shared.config.retry, &self.shared.metrics);
        let (result, attempts) =
            attempts::attempt(&job, &target, history, self.sender, config, metrics).await;
        Ok(self.conclude(&job, claim, history, (result, attempts), now))
    }

    /// The settlement builders' view of this delivery at `now`.
    fn context(&self, now: OffsetDateTime) -> Context<'_> {
        context(&self.delivery, self.shared, self.name, now)
    }

    /// Dead-lettered before the job is read: the bytes echo what they can.
    fn refused(&self, reason: crate::outcome::Reason, failure: Failure) -> Box<Settlement> {
        let echo = crate::job::Echo::read(self.delivery.body);
        let ctx = self.context(OffsetDateTime::now_utc());
        Box::new(ctx.dead_letter(reason, failure, echo, 0))
    }

    /// Copies handed back carry what earlier copies spent (see
    /// `Settler::hand_back`); past the limit the job is poison, as the
    /// broker would have decided had it been nacked each time.
    fn within_delivery_limit(&self) -> Step<()> {
        let headers = self.delivery.properties.headers().as_ref();
        let spent = crate::broker::headers::spent_deliveries(headers);
        let limit = self.shared.config.broker.delivery_limit;
        if spent <= limit {
            return Ok(());
        }
        let failure = Failure::local(format!(
            "delivered {spent} times without settling (delivery limit {limit})"
        ));
        Err(self.refused(crate::outcome::Reason::Poison, failure))
    }

    /// A header whose value nested too deep was dropped on receipt: what
    /// the producer sent never reached the worker whole.
    fn headers_whole(&self) -> Step<()> {
        let headers = self.delivery.properties.headers().as_ref();
        let Some(header) = crate::broker::headers::too_deep(headers) else {
            return Ok(());
        };
        let failure = Failure::local(format!(
            "header {header}: tables or arrays nested deeper than {} levels (dropped on receipt)",
            crate::broker::headers::MAX_NESTING
        ));
        Err(self.refused(crate::outcome::Reason::Malformed, failure))
    }

    /// The job's signed retry history; a forged one reads as a fresh job.
    fn history(&self, now: OffsetDateTime) -> History {
        let (body, props) = (self.delivery.body, self.delivery.properties);
        let (history, trust) = History::read(props, body, self.name, &self.channel.key, now);
        if trust == Trust::Forged {
            ForgedHistory { channel: self.name }.emit(&self.shared.metrics);
        }
        history
    }

    /// The job, valid by construction; its id and masked phone on the spans.
    fn parse(&self, now: OffsetDateTime, history: &History) -> Step<Job> {
        let parsed = {
            let _validate = crate::observe::trace::stage_span("validate").entered();
            Job::parse(self.delivery.body, self.name, self.channel.config.provider)
        };
        let job = match parsed {
            Ok(job) => job,
            Err(rejection) => {
                if let Some(id) = &rejection.echo.job_id {
                    self.record_job_id(id);
                }
                let failure = Failure::local(rejection.message);
                let (reason, echo) = (rejection.reason, *rejection.echo);
                let attempts = history.attempts.max(1);
                let ctx = self.context(now);
                return Err(Box::new(ctx.dead_letter(reason, failure, echo, attempts)));
            }
        };
        self.record_job_id(job.id.as_str());
        if self.channel.config.replies.is_some()
            && let Err(why) = distinct_titles(&job)
        {
            let ctx = self.context(now);
            let failure = Failure::local(why);
            let attempts = history.attempts.max(1);
            return Err(Box::new(ctx.dead_letter(
                crate::outcome::Reason::Validation,
                failure,
                job.echo(),
                attempts,
            )));
        }
        // `Phone` displays masked: +1555***4567.
        Span::current().record("phone", tracing::field::display(&job.phone));
        if let Some(hook) = self.shared.fault {
            hook(job.id.as_str());
        }
        Ok(job)
    }

    fn record_job_id(&self, id: &str) {
        Span::current().record("job_id", tracing::field::display(escape(id)));
        self.delivery.trace.record("octopods.job_id", id);
    }

    /// This delivery's claim on the job: not sent already by this worker
    /// (else its `sent` event is published again), not in flight on
    /// another delivery (else wait for that one).
    async fn claim(&self, job: &Job, now: OffsetDateTime, history: &History) -> Step<Claim<'_>> {
        loop {
            match self.shared.dedup.begin(self.name, job.id.as_str()) {
                Begin::Go(claim) => return Ok(claim),
                Begin::Sent(kept) => {
                    return Err(Box::new(self.sent_before(&kept, job, now, history)));
                }
                Begin::Wait(mut done) => tokio::select! {
                    biased;
                    () = self.stop.cancelled() => return Err(Box::new(Settlement::HandBack {
                        why: "stopping while a copy of the job was in flight",
                    })),
                    _ = done.changed() => {}
                },
            }
        }
    }

    /// Sent already by this worker: its `sent` event again, not a send.
    fn sent_before(
        &self,
        kept: &[u8],
        job: &Job,
        now: OffsetDateTime,
        history: &History,
    ) -> Settlement {
        match SentEvent::from_kept(kept, job, self.name) {
            Some(event) => {
                DuplicateSuppressed { channel: self.name }.emit(&self.shared.metrics);
                sent(&self.delivery, self.channel, self.shared, &event, job)
            }
            // Never written by `kept`: a bug, not a reason to lose the job.
            None => self.context(now).dead_letter(
                crate::outcome::Reason::Internal,
                Failure::local("the remembered send of this job cannot be read"),
                job.echo(),
                history.attempts.max(1),
            ),
        }
    }

    /// What the attempts came to, as a settlement.
    fn conclude(
        &self,
        job: &Job,
        claim: Claim<'_>,
        history: History,
        (result, attempts): (Final, u32),
        now: OffsetDateTime,
    ) -> Settlement {
        match result {
            Final::Sent(receipt, via) => {
                self.shared.metrics.sent_via(self.name, via);
                let at = OffsetDateTime::now_utc();
                let event = SentEvent::new(job, self.name, receipt, attempts, via, at);
                // Remember before publishing: if the broker goes away now, the
                // redelivered job re-publishes this event instead of re-sending.
                // Cannot fail (strings and numbers); if it did, a redelivery
                // would send again rather than re-publish: still no job lost.
                if let Ok(kept) = event.kept() {
                    claim.remember(kept);
                }
                sent(&self.delivery, self.channel, self.shared, &event, job)
            }
            Final::DeadLetter(reason, failure) => self
                .context(OffsetDateTime::now_utc())
                .dead_letter(reason, failure, job.echo(), attempts),
            Final::Delay(later) => {
                let config = &self.shared.config.retry;
                let ctx = self.context(now);
                delay(&ctx, &self.channel.key, history, attempts, config, later)
            }
            Final::HandBack => Settlement::HandBack {
                why: "stopping before this job's turn",
            },
        }
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
        () = shared.health.until_open() => {}
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
    let mut decision = crate::octopods::status::decide(&check, &polled, now, &shared.config.status);
    let records = conversation_seen(channel, &check, &polled, &mut decision.next);
    context(&delivery, shared, name, now).status(decision.events, decision.next, records)
}

/// On an Intercom reply-tracking channel, the prompt's conversation the
/// first time a poll shows it: a record for the prompt stream (the next
/// check remembers it was recorded).
fn conversation_seen(
    channel: &ChannelState,
    check: &Check,
    polled: &crate::octopods::status::Polled,
    next: &mut Option<(Check, std::time::Duration)>,
) -> Vec<Record> {
    let intercom = channel
        .config
        .replies
        .as_ref()
        .is_some_and(|r| r.platform == crate::config::Platform::Intercom);
    let crate::octopods::status::Polled::Status(answer) = polled else {
        return Vec::new();
    };
    let Some(id) = answer.conversation().filter(|_| intercom) else {
        return Vec::new();
    };
    if check.conversation.as_deref() == Some(id.as_str()) {
        return Vec::new();
    }
    if let Some((next, _)) = next {
        next.conversation = Some(id.clone());
    }
    vec![Record::Conversation {
        channel: check.channel.clone(),
        job_id: check.job_id.clone(),
        conversation_id: id,
    }]
}

/// On a reply-tracking channel, a tap must name one option: titles that
/// are the same once compared (case, space, Unicode form, markup) refuse
/// the job (docs/contract.md §15).
fn distinct_titles(job: &Job) -> Result<(), String> {
    let mut seen: Vec<(String, &str)> = Vec::new();
    for c in &job.choices() {
        let Some(n) = crate::replies::text::normalise(&c.title) else {
            continue;
        };
        if let Some((_, other)) = seen.iter().find(|(m, _)| *m == n) {
            return Err(format!(
                "waba_interactive_message: option titles {other:?} and {:?} are the same answer \
                 once compared (case, spaces, Unicode form); this channel matches replies by title",
                c.title
            ));
        }
        seen.push((n, &c.title));
    }
    Ok(())
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
    job: &Job,
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
        prompt(channel, event, job),
    )
}

/// On a reply-tracking channel, what the matcher must know of a sent
/// prompt with options: its record for the prompt stream, the phone keyed.
fn prompt(channel: &ChannelState, event: &SentEvent, job: &Job) -> Option<Record> {
    let secrets = channel.replies.as_ref()?;
    let options = job.choices();
    if options.is_empty() {
        return None;
    }
    let digits = crate::replies::text::phone_digits(job.phone.as_str())?;
    Some(Record::Prompt(Prompt {
        channel: event.channel.clone(),
        job_id: event.job_id.clone(),
        phone: crate::replies::record::phone_key(&secrets.signing, &digits),
        options,
        message_id: event.message_id.clone(),
        channel_message_id: event.channel_message_id.clone(),
        sent_at: event.sent_at.clone(),
        metadata: event.metadata.clone(),
    }))
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
