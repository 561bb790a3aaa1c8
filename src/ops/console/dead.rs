//! The dead letters as the console shows them: an [`Index`] read from one
//! exact snapshot (grouped by reason × channel × folded error, "as of" when
//! it was read, the lock held only for the read), and the replay and
//! export-then-purge [`Action`]s an operator confirms after their dry run —
//! all on the `dlq` machinery the CLI uses.

use std::{
    collections::{BTreeSet, HashMap},
    io::Write,
    path::PathBuf,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use time::OffsetDateTime;

use crate::{
    config::Config,
    ops::dlq::{self, DeadMessage, Filter, Op, Source, Summary, Why},
};

/// Kept of a row's job id and error (a page bounds them again).
const ROW_TEXT: usize = 300;

/// One dead letter of the index.
#[derive(Debug, Clone)]
pub(crate) struct Row {
    pub(crate) print: u64,
    pub(crate) group: usize,
    pub(crate) job_id: Option<Box<str>>,
    /// Its own text (the group holds the folded one and the channel).
    pub(crate) error: Box<str>,
    pub(crate) attempts: u32,
    pub(crate) replays: u32,
    pub(crate) failed_at: Option<OffsetDateTime>,
}

/// Dead letters of one cause.
#[derive(Debug, Clone)]
pub(crate) struct Group {
    /// What a page names the group by: a digest of its cause, made here,
    /// never its text (a browser posts `\n` back as `\r\n`, and an error
    /// can hold NUL, bidi controls or 2,000 characters).
    pub(crate) id: String,
    pub(crate) why: Why,
    pub(crate) channel: Option<String>,
    /// The folded error ([`DeadMessage::error_group`]).
    pub(crate) error: String,
    pub(crate) count: usize,
    pub(crate) oldest: Option<OffsetDateTime>,
    pub(crate) newest: Option<OffsetDateTime>,
}

impl Group {
    /// `-` for messages without a channel.
    pub(crate) fn channel_shown(&self) -> &str {
        self.channel.as_deref().unwrap_or("-")
    }
}

/// A group's id: 128 bits of SHA-256 over its reason, channel and folded
/// error, each length-prefixed (so no two causes can spell the same input).
fn group_id(why: Why, channel: Option<&str>, error: &str) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    for part in [why.as_str(), channel.unwrap_or("\u{0}"), error] {
        h.update(u64::try_from(part.len()).unwrap_or(u64::MAX).to_be_bytes());
        h.update(part.as_bytes());
    }
    h.finalize()
        .iter()
        .take(16)
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// One queue as one snapshot had it.
#[derive(Debug)]
pub(crate) struct Index {
    pub(crate) source: Source,
    pub(crate) as_of: OffsetDateTime,
    /// How long the read held the queue.
    pub(crate) took: Duration,
    /// Largest first.
    pub(crate) groups: Vec<Group>,
    /// In queue order.
    pub(crate) rows: Vec<Row>,
}

impl Index {
    /// Reads the whole queue once (nothing changes in it).
    pub(crate) async fn read(
        config: &Config,
        source: Source,
        wait: Duration,
    ) -> anyhow::Result<Self> {
        let started = Instant::now();
        let as_of = OffsetDateTime::now_utc();
        let mut groups: Vec<Group> = Vec::new();
        let mut by_key: HashMap<(Why, Option<String>, String), usize> = HashMap::new();
        let mut rows = Vec::new();
        dlq::visit(config, source, wait, |_, m: DeadMessage| {
            let folded = m.error_group();
            let key = (m.why, m.channel.clone(), folded);
            let next = groups.len();
            let g = *by_key
                .entry(key)
                .or_insert_with_key(|(why, channel, error)| {
                    groups.push(Group {
                        id: group_id(*why, channel.as_deref(), error),
                        why: *why,
                        channel: channel.clone(),
                        error: error.clone(),
                        count: 0,
                        oldest: None,
                        newest: None,
                    });
                    next
                });
            if let Some(group) = groups.get_mut(g) {
                group.count = group.count.saturating_add(1);
                if let Some(at) = m.failed_at {
                    group.oldest = Some(group.oldest.map_or(at, |o| o.min(at)));
                    group.newest = Some(group.newest.map_or(at, |n| n.max(at)));
                }
            }
            rows.push(Row {
                print: m.print,
                group: g,
                job_id: m
                    .job_id
                    .map(|j| crate::observe::logging::truncate(j, ROW_TEXT).into_boxed_str()),
                error: crate::observe::logging::truncate(m.error, ROW_TEXT).into_boxed_str(),
                attempts: m.attempts,
                replays: m.replays,
                failed_at: m.failed_at,
            });
            true
        })
        .await?;
        // Largest first; rows keep their group's old position.
        let mut order: Vec<usize> = (0..groups.len()).collect();
        order.sort_by(|a, b| {
            let (ga, gb) = (groups.get(*a), groups.get(*b));
            gb.map(|g| g.count)
                .cmp(&ga.map(|g| g.count))
                .then_with(|| a.cmp(b))
        });
        let mut new_of = vec![0_usize; groups.len()];
        for (new, old) in order.iter().enumerate() {
            if let Some(slot) = new_of.get_mut(*old) {
                *slot = new;
            }
        }
        let mut sorted: Vec<Option<Group>> = groups.into_iter().map(Some).collect();
        let groups = order
            .iter()
            .filter_map(|old| sorted.get_mut(*old).and_then(Option::take))
            .collect();
        for r in &mut rows {
            r.group = new_of.get(r.group).copied().unwrap_or_default();
        }
        Ok(Self {
            source,
            as_of,
            took: started.elapsed(),
            groups,
            rows,
        })
    }

    /// The group a page named by its id.
    pub(crate) fn find(&self, id: &str) -> Option<usize> {
        self.groups.iter().position(|g| g.id == id)
    }

    /// The prints of one group's messages.
    pub(crate) fn prints_of(&self, group: usize) -> BTreeSet<u64> {
        self.rows
            .iter()
            .filter(|r| r.group == group)
            .map(|r| r.print)
            .collect()
    }
}

/// What an operator asked for, counted by a dry run, waiting for "confirm".
#[derive(Debug, Clone)]
pub(crate) struct Plan {
    pub(crate) kind: Kind,
    pub(crate) source: Source,
    pub(crate) filter: Filter,
    /// "group validation × store-eu × …", "3 selected".
    pub(crate) what: String,
    pub(crate) user: String,
    pub(crate) dry_run: Summary,
    pub(crate) made: Instant,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Replay,
    /// Export to a backup file, then purge exactly what it holds.
    Purge,
}

impl Kind {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Kind::Replay => "replay",
            Kind::Purge => "purge",
        }
    }
}

/// A confirmed plan at work, or done.
#[derive(Debug)]
pub(crate) struct Action {
    pub(crate) plan: Plan,
    pub(crate) started: OffsetDateTime,
    pub(crate) state: Mutex<State>,
}

#[derive(Debug, Clone)]
pub(crate) enum State {
    Running {
        step: &'static str,
        seen: u32,
        done: usize,
    },
    Done {
        lines: Vec<String>,
        backup: Option<PathBuf>,
    },
    Failed(String),
}

impl Action {
    fn set(&self, state: State) {
        if let Ok(mut s) = self.state.lock() {
            *s = state;
        }
    }

    pub(crate) fn state(&self) -> State {
        self.state
            .lock()
            .map(|s| s.clone())
            .unwrap_or_else(|_| State::Failed("state unavailable".into()))
    }
}

/// The dry run of a plan: the counts a confirm would act on now.
pub(crate) async fn dry_run(
    config: &Config,
    plan: &Plan,
    wait: Duration,
) -> anyhow::Result<Summary> {
    let op = match plan.kind {
        Kind::Replay => Op::Replay {
            limit: None,
            dry_run: true,
        },
        Kind::Purge => Op::Purge {
            limit: None,
            dry_run: true,
        },
    };
    let req = dlq::Request {
        source: plan.source,
        filter: &plan.filter,
        op,
        wait,
        only_exported: None,
    };
    dlq::run(config, &req, &mut std::io::sink(), None).await
}

/// Carries out a confirmed plan, telling `action` how far it got.
pub(crate) async fn carry_out(
    config: Arc<Config>,
    action: Arc<Action>,
    export_dir: PathBuf,
    wait: Duration,
) {
    let done = match action.plan.kind {
        Kind::Replay => replay(&config, &action, wait).await,
        Kind::Purge => export_then_purge(&config, &action, &export_dir, wait).await,
    };
    match done {
        Ok((lines, backup)) => action.set(State::Done { lines, backup }),
        Err(e) => action.set(State::Failed(format!("{e:#}"))),
    }
}

fn telling<'a>(
    action: &'a Action,
    step: &'static str,
) -> impl Fn(&Summary, Duration) + Send + Sync + 'a {
    move |s: &Summary, _| {
        action.set(State::Running {
            step,
            seen: s.scanned,
            done: s.acted,
        });
    }
}

async fn replay(
    config: &Config,
    action: &Action,
    wait: Duration,
) -> anyhow::Result<(Vec<String>, Option<PathBuf>)> {
    let op = Op::Replay {
        limit: None,
        dry_run: false,
    };
    let req = dlq::Request {
        source: action.plan.source,
        filter: &action.plan.filter,
        op,
        wait,
        only_exported: None,
    };
    let tell = telling(action, "replaying");
    let s = dlq::run(config, &req, &mut std::io::sink(), Some(&tell)).await?;
    Ok((
        vec![
            format!("replayed {}", s.acted),
            format!(
                "skipped at max_replays ({}): {}",
                config.dlq.max_replays, s.skipped_over_cap
            ),
            format!(
                "skipped, channel no longer configured: {}",
                s.skipped_no_channel
            ),
            format!(
                "kept in the queue: {}",
                s.scanned
                    .saturating_sub(u32::try_from(s.acted).unwrap_or(u32::MAX))
            ),
        ],
        None,
    ))
}

async fn export_then_purge(
    config: &Config,
    action: &Action,
    dir: &std::path::Path,
    wait: Duration,
) -> anyhow::Result<(Vec<String>, Option<PathBuf>)> {
    use anyhow::Context;
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let stamp = action
        .started
        .format(&time::macros::format_description!(
            "[year][month][day]T[hour][minute][second]Z"
        ))
        .unwrap_or_default();
    let path = dir.join(format!(
        "dlq-{}-{stamp}-{}.jsonl",
        action.plan.source.as_str(),
        ulid::Ulid::generate().to_string().to_lowercase()
    ));
    let file = std::fs::File::create_new(&path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    let mut out = std::io::BufWriter::new(file);
    let export = dlq::Request {
        source: action.plan.source,
        filter: &action.plan.filter,
        op: Op::Export,
        wait,
        only_exported: None,
    };
    let tell = telling(action, "exporting");
    let exported = dlq::run(config, &export, &mut out, Some(&tell)).await?;
    out.flush()?;
    out.into_inner()
        .map_err(|e| anyhow::anyhow!("cannot write {}: {}", path.display(), e.error()))?
        .sync_all()?;
    let purge = dlq::Request {
        op: Op::Purge {
            limit: None,
            dry_run: false,
        },
        only_exported: Some(&path),
        ..export
    };
    let tell = telling(action, "purging what was exported");
    let purged = dlq::run(config, &purge, &mut std::io::sink(), Some(&tell)).await?;
    Ok((
        vec![
            format!("exported {} to {}", exported.written, path.display()),
            format!("purged {} (exactly those in the backup)", purged.acted),
            format!(
                "kept: {} matching but not in the backup",
                purged.not_exported
            ),
        ],
        Some(path),
    ))
}
