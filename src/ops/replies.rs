//! What came back lately (docs/contract.md §15), read from the prompt
//! stream alone: per reply-tracking channel, the prompts sent and the
//! replies matched, ambiguous, unmatched, without a prompt, or too late
//! within the period; and the latest matched replies (job, option, how).
//! Never a customer's text or phone: the stream holds neither.

use std::{collections::BTreeMap, time::Duration};

use futures_util::StreamExt;
use serde_json::Value;
use time::OffsetDateTime;

use crate::{
    broker::{
        self, Names, Publisher,
        streams::{self, Credit, Offset},
    },
    config::Config,
    replies::record::Record,
};

/// How many recent replies are shown.
const RECENT: usize = 50;

/// One channel's counts over the period.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Counts {
    pub prompts: u64,
    /// By outcome: matched, ambiguous, unmatched, no_prompt, expired.
    pub outcomes: BTreeMap<String, u64>,
}

/// A matched reply.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Recent {
    pub channel: String,
    pub job_id: String,
    pub option: String,
    pub matched_by: String,
    pub replied_at: String,
}

#[derive(Debug, Clone)]
pub(crate) struct Summary {
    pub as_of: OffsetDateTime,
    pub period: Duration,
    pub channels: BTreeMap<String, Counts>,
    /// Newest first.
    pub recent: Vec<Recent>,
}

/// Reads the stream's last `period` up to a mark appended now.
pub(crate) async fn read(config: &Config, period: Duration) -> anyhow::Result<Summary> {
    let names = Names::new(&config.broker.prefix);
    let mut summary = Summary {
        as_of: OffsetDateTime::now_utc(),
        period,
        channels: config
            .channels
            .iter()
            .filter(|c| c.replies.is_some())
            .map(|c| (c.name.clone(), Counts::default()))
            .collect(),
        recent: Vec::new(),
    };
    if summary.channels.is_empty() {
        return Ok(summary);
    }
    let conn = broker::connect(&config.broker, "replies").await?;
    let publisher = Publisher::open(&conn, config.command_publish_timeout()).await?;
    let from = crate::clock::unix_now()
        .saturating_sub(i64::try_from(period.as_secs()).unwrap_or(i64::MAX));
    let (_ch, mut consumer) =
        streams::consume(&conn, &names.prompts(), Offset::Since(from), 2000).await?;
    let mark = ulid::Ulid::generate().to_string();
    crate::replies::book::append(&publisher, &names, &Record::Mark { id: mark.clone() }).await?;
    let read = async {
        let mut credit = Credit::every(500);
        while let Some(next) = consumer.next().await {
            let d = next?;
            credit.read(&d).await;
            if d.data.len() > crate::replies::record::MAX_RECORD {
                continue;
            }
            if take(&mut summary, d.routing_key.as_str(), &d.data, &mark) {
                return Ok(());
            }
        }
        Err(anyhow::anyhow!("the prompt stream ended"))
    };
    let done = tokio::time::timeout(Duration::from_secs(30), read).await;
    broker::close(&conn, 200, "read").await;
    done.map_err(|_| anyhow::anyhow!("the prompt stream did not give back a mark within 30 s"))??;
    summary.recent.reverse();
    summary.recent.truncate(RECENT);
    Ok(summary)
}

/// One record into the summary; true at our own mark.
fn take(s: &mut Summary, routing_key: &str, data: &[u8], mark: &str) -> bool {
    let count = |s: &mut Summary, channel: &str, outcome: &str| {
        if let Some(c) = s.channels.get_mut(channel) {
            let n = c.outcomes.entry(outcome.to_owned()).or_default();
            *n = n.saturating_add(1);
        }
    };
    if routing_key.starts_with("replied.") || routing_key.starts_with("reply_ambiguous.") {
        let Ok(v) = serde_json::from_slice::<Value>(data) else {
            return false;
        };
        let text = |p: &str| {
            v.pointer(p)
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned()
        };
        let channel = text("/channel");
        if routing_key.starts_with("replied.") {
            count(s, &channel, "matched");
            s.recent.push(Recent {
                channel,
                job_id: text("/job_id"),
                option: text("/option/title"),
                matched_by: text("/matched_by"),
                replied_at: text("/replied_at"),
            });
            if s.recent.len() > RECENT * 4 {
                s.recent.drain(..RECENT * 3);
            }
        } else {
            count(s, &channel, "ambiguous");
        }
        return false;
    }
    match serde_json::from_slice::<Record>(data) {
        Ok(Record::Mark { id }) => id == mark,
        Ok(Record::Prompt(p)) => {
            if let Some(c) = s.channels.get_mut(&p.channel) {
                c.prompts = c.prompts.saturating_add(1);
            }
            false
        }
        Ok(Record::Outcome {
            channel, outcome, ..
        }) => {
            count(s, &channel, &outcome);
            false
        }
        _ => false,
    }
}
