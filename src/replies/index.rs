//! The open prompts, in memory, as the prompt stream says: found by the
//! Intercom conversation they are in, or by the hash of their phone; and
//! the replies already answered (by the platform's message id), so a
//! webhook delivered twice publishes one event. Pure: it applies records
//! and answers questions; reading the stream is [`super::follow`]'s.

use std::{collections::HashMap, sync::Arc};

use time::{OffsetDateTime, format_description::well_known::Rfc3339};

use super::{record::Prompt, record::Record, text::normalise};
use crate::job::interactive::Choice;

/// A prompt's key: (channel, job_id).
pub(crate) type JobKey = (Arc<str>, Arc<str>);

/// One open prompt, kept small: there may be 100,000s (each string boxed,
/// channel names shared, metadata as the JSON text it came in).
#[derive(Debug, Clone)]
pub(crate) struct Open {
    pub options: Box<[Opt]>,
    pub message_id: Box<str>,
    pub channel_message_id: Option<Box<str>>,
    /// Unix seconds.
    pub sent_at: i64,
    pub metadata: Option<Box<str>>,
}

/// An option of a prompt, with its title as compared.
#[derive(Debug, Clone)]
pub(crate) struct Opt {
    pub id: Box<str>,
    pub title: Box<str>,
    pub normalised: Box<str>,
}

impl Opt {
    pub(crate) fn choice(&self) -> Choice {
        Choice {
            id: self.id.to_string(),
            title: self.title.to_string(),
        }
    }
}

/// What a reply came to among some prompts.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Found {
    /// One open prompt has an option with this title.
    Matched { prompt: JobKey, option: usize },
    /// Several open prompts do: the candidates, never a guess.
    Ambiguous(Vec<JobKey>),
    /// Open prompts, none with this title: free text.
    Unmatched,
    /// Only prompts past their window have this title.
    Expired,
    /// No prompt at all.
    NoPrompt,
}

impl Found {
    /// Whether this settles the reply (else the next way of matching is tried).
    pub(crate) fn settles(&self) -> bool {
        matches!(self, Found::Matched { .. } | Found::Ambiguous(_))
    }

    /// The more telling of two answers: a match or an ambiguity, then
    /// `expired`, then `unmatched`, then `no_prompt`.
    pub(crate) fn or(self, other: Found) -> Found {
        let rank = |f: &Found| match f {
            Found::Matched { .. } | Found::Ambiguous(_) => 3,
            Found::Expired => 2,
            Found::Unmatched => 1,
            Found::NoPrompt => 0,
        };
        if rank(&other) > rank(&self) {
            other
        } else {
            self
        }
    }
}

#[derive(Debug, Default)]
pub(crate) struct Index {
    prompts: HashMap<JobKey, Open>,
    by_phone: HashMap<(Arc<str>, Box<str>), Vec<JobKey>>,
    by_conversation: HashMap<Box<str>, Vec<JobKey>>,
    /// Reply keys already published, with when (unix s).
    answered: HashMap<Box<str>, i64>,
    /// Channel names, shared by every key that names one.
    channels: HashMap<Box<str>, Arc<str>>,
}

impl Index {
    pub(crate) fn len(&self) -> usize {
        self.prompts.len()
    }

    /// Applies one record of the stream.
    pub(crate) fn apply(&mut self, record: Record) {
        match record {
            Record::Prompt(p) => self.add(p),
            Record::Conversation {
                channel,
                job_id,
                conversation_id,
            } => {
                let key: JobKey = (self.channel(&channel), job_id.into());
                if self.prompts.contains_key(&key) {
                    let list = self
                        .by_conversation
                        .entry(conversation_id.into_boxed_str())
                        .or_insert_with(|| Vec::with_capacity(1));
                    if !list.contains(&key) {
                        list.push(key);
                    }
                }
            }
            Record::Mark { .. } | Record::Outcome { .. } => {}
        }
    }

    fn add(&mut self, p: Prompt) {
        let Ok(sent) = OffsetDateTime::parse(&p.sent_at, &Rfc3339) else {
            return;
        };
        let options = p
            .options
            .into_iter()
            .filter_map(|c| {
                let normalised = normalise(&c.title)?.into_boxed_str();
                Some(Opt {
                    id: c.id.into_boxed_str(),
                    title: c.title.into_boxed_str(),
                    normalised,
                })
            })
            .collect();
        let key: JobKey = (self.channel(&p.channel), p.job_id.into());
        let phone: Box<str> = p.phone.into();
        // Most phones have one prompt: a list of one, not Vec's first four.
        let list = self
            .by_phone
            .entry((key.0.clone(), phone))
            .or_insert_with(|| Vec::with_capacity(1));
        if !list.contains(&key) {
            list.push(key.clone());
        }
        self.prompts.insert(
            key,
            Open {
                options,
                message_id: p.message_id.into(),
                channel_message_id: p.channel_message_id.map(Into::into),
                sent_at: sent.unix_timestamp(),
                metadata: p.metadata.map(|m| m.to_string().into_boxed_str()),
            },
        );
    }

    /// The one `Arc` of a channel's name.
    fn channel(&mut self, name: &str) -> Arc<str> {
        if let Some(c) = self.channels.get(name) {
            return c.clone();
        }
        let c: Arc<str> = name.into();
        self.channels.insert(name.into(), c.clone());
        c
    }

    /// Remembers that the reply `key` was published (from the stream, or
    /// by this replica's matcher the moment its event is confirmed).
    pub(crate) fn answered(&mut self, key: &str, at: i64) {
        self.answered.insert(key.into(), at);
    }

    pub(crate) fn was_answered(&self, key: &str) -> bool {
        self.answered.contains_key(key)
    }

    pub(crate) fn prompt(&self, key: &JobKey) -> Option<&Open> {
        self.prompts.get(key)
    }

    /// Among the prompts of the conversation, on `channels`.
    pub(crate) fn in_conversation(
        &self,
        conversation: &str,
        channels: &[&str],
        title: &str,
        now: i64,
        window: &dyn Fn(&str) -> Option<i64>,
    ) -> Found {
        let keys = self
            .by_conversation
            .get(conversation)
            .into_iter()
            .flatten()
            .filter(|k| channels.contains(&&*k.0));
        self.among(keys, title, now, window)
    }

    /// Among the prompts to a phone: `phones` is (channel, its phone key).
    pub(crate) fn to_phone(
        &self,
        phones: &[(Arc<str>, String)],
        title: &str,
        now: i64,
        window: &dyn Fn(&str) -> Option<i64>,
    ) -> Found {
        let keys = phones.iter().flat_map(|(channel, phone)| {
            self.by_phone
                .get(&(channel.clone(), phone.as_str().into()))
                .into_iter()
                .flatten()
        });
        self.among(keys, title, now, window)
    }

    fn among<'a>(
        &self,
        keys: impl Iterator<Item = &'a JobKey>,
        title: &str,
        now: i64,
        window: &dyn Fn(&str) -> Option<i64>,
    ) -> Found {
        let mut hits: Vec<(JobKey, usize)> = Vec::new();
        let (mut expired, mut open) = (false, false);
        for key in keys {
            let (Some(p), Some(window)) = (self.prompts.get(key), window(&key.0)) else {
                continue;
            };
            let is_open = now.saturating_sub(p.sent_at) <= window;
            let option = p.options.iter().position(|o| &*o.normalised == title);
            match (is_open, option) {
                (true, Some(i)) if !hits.iter().any(|(k, _)| k == key) => {
                    hits.push((key.clone(), i));
                }
                (true, _) => open = true,
                (false, Some(_)) => expired = true,
                (false, None) => {}
            }
        }
        match hits.len() {
            1 => {
                let (prompt, option) = hits.remove(0);
                Found::Matched { prompt, option }
            }
            0 if expired => Found::Expired,
            0 if open => Found::Unmatched,
            0 => Found::NoPrompt,
            _ => {
                let mut keys: Vec<JobKey> = hits.into_iter().map(|(k, _)| k).collect();
                keys.sort();
                Found::Ambiguous(keys)
            }
        }
    }

    /// Forgets prompts sent, and replies answered, before `horizon` (unix s).
    pub(crate) fn prune(&mut self, horizon: i64) {
        self.prompts.retain(|_, p| p.sent_at >= horizon);
        let prompts = &self.prompts;
        self.by_conversation.retain(|_, keys| {
            keys.retain(|k| prompts.contains_key(k));
            !keys.is_empty()
        });
        self.by_phone.retain(|_, keys| {
            keys.retain(|k| prompts.contains_key(k));
            !keys.is_empty()
        });
        self.answered.retain(|_, at| *at >= horizon);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn prompt(job: &str, phone: &str, titles: &[&str], sent_at: &str) -> Record {
        Record::Prompt(Prompt {
            channel: "eu".into(),
            job_id: job.into(),
            phone: phone.into(),
            options: titles
                .iter()
                .enumerate()
                .map(|(i, t)| Choice {
                    id: format!("o{i}"),
                    title: (*t).into(),
                })
                .collect(),
            message_id: format!("m-{job}"),
            channel_message_id: None,
            sent_at: sent_at.into(),
            metadata: None,
        })
    }

    const T0: &str = "2026-12-01T10:00:00Z";
    const NOW: i64 = 1_796_119_200 + 3600; // an hour after T0
    const WEEK: i64 = 7 * 24 * 3600;

    fn week(_: &str) -> Option<i64> {
        Some(WEEK)
    }

    fn phones(p: &str) -> Vec<(Arc<str>, String)> {
        vec![("eu".into(), p.into())]
    }

    fn yes() -> String {
        normalise("Yes, received").unwrap()
    }

    #[test]
    fn one_open_prompt_with_the_title_is_the_match() {
        let mut index = Index::default();
        index.apply(prompt("j1", "p1", &["Yes, received", "Not yet"], T0));
        assert_eq!(
            index.to_phone(&phones("p1"), &yes(), NOW, &week),
            Found::Matched {
                prompt: ("eu".into(), "j1".into()),
                option: 0
            }
        );
        let text = normalise("thanks!").unwrap();
        assert_eq!(
            index.to_phone(&phones("p1"), &text, NOW, &week),
            Found::Unmatched
        );
        assert_eq!(
            index.to_phone(&phones("p2"), &yes(), NOW, &week),
            Found::NoPrompt
        );
        assert_eq!(
            index.to_phone(&phones("p1"), &yes(), NOW + WEEK, &week),
            Found::Expired
        );
        // A channel no longer tracking replies has no open prompts.
        assert_eq!(
            index.to_phone(&phones("p1"), &yes(), NOW, &|_| None),
            Found::NoPrompt
        );
    }

    #[test]
    fn two_open_prompts_with_the_title_are_ambiguous_never_a_guess() {
        let mut index = Index::default();
        index.apply(prompt("j1", "p1", &["Yes, received"], T0));
        index.apply(prompt("j2", "p1", &["yes,  RECEIVED"], T0));
        index.apply(prompt("j3", "p1", &["Other"], T0));
        assert_eq!(
            index.to_phone(&phones("p1"), &yes(), NOW, &week),
            Found::Ambiguous(vec![("eu".into(), "j1".into()), ("eu".into(), "j2".into())])
        );
        // The same prompt recorded twice (a re-published send) is one prompt.
        let mut index = Index::default();
        index.apply(prompt("j1", "p1", &["Yes, received"], T0));
        index.apply(prompt("j1", "p1", &["Yes, received"], T0));
        assert!(index.to_phone(&phones("p1"), &yes(), NOW, &week).settles());
    }

    #[test]
    fn a_conversation_narrows_to_its_prompts_and_pruning_forgets() {
        let mut index = Index::default();
        index.apply(prompt("j1", "p1", &["Yes, received"], T0));
        index.apply(prompt("j2", "p1", &["Yes, received"], T0));
        index.apply(Record::Conversation {
            channel: "eu".into(),
            job_id: "j2".into(),
            conversation_id: "c9".into(),
        });
        assert_eq!(
            index.in_conversation("c9", &["eu"], &yes(), NOW, &week),
            Found::Matched {
                prompt: ("eu".into(), "j2".into()),
                option: 0
            }
        );
        assert_eq!(
            index.in_conversation("c9", &["other"], &yes(), NOW, &week),
            Found::NoPrompt
        );
        index.answered("part-1", NOW);
        assert!(index.was_answered("part-1"));
        index.prune(NOW + 1);
        assert_eq!(index.len(), 0);
        assert!(!index.was_answered("part-1"));
        assert_eq!(
            index.in_conversation("c9", &["eu"], &yes(), NOW, &week),
            Found::NoPrompt
        );
    }
}
