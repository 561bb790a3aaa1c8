//! `octopods-worker enqueue`: publishes jobs (one JSON object, or JSON lines)
//! to `<prefix>.jobs` with the channel as routing key, persistent and with
//! publisher confirms. The newcomer's way to try the worker.

use anyhow::{Context, bail};
use lapin::BasicProperties;
use serde_json::Value;

use crate::{
    broker::{self, Names, Publisher},
    config::Config,
};

/// One job to publish: its channel and its exact bytes.
#[derive(Debug, PartialEq)]
pub struct Pending {
    pub channel: String,
    pub body: Vec<u8>,
}

/// Splits input into jobs: a single JSON value, or one JSON object per line.
/// Every job's channel comes from `--channel`, else its own `channel` field.
pub fn read_jobs(
    input: &str,
    channel: Option<&str>,
    config: &Config,
) -> anyhow::Result<Vec<Pending>> {
    let trimmed = input.trim();
    let docs: Vec<(usize, &str)> = if serde_json::from_str::<Value>(trimmed).is_ok() {
        vec![(1, trimmed)]
    } else {
        input
            .lines()
            .enumerate()
            .map(|(i, l)| (i.saturating_add(1), l.trim()))
            .filter(|(_, l)| !l.is_empty())
            .collect()
    };
    let mut jobs = Vec::with_capacity(docs.len());
    for (line, doc) in docs {
        let value: Value =
            serde_json::from_str(doc).with_context(|| format!("line {line}: not JSON"))?;
        let own = value.get("channel").and_then(Value::as_str);
        let Some(ch) = channel.or(own) else {
            bail!("line {line}: no channel; pass --channel or set \"channel\" in the job");
        };
        if config.channel(ch).is_none() {
            bail!("line {line}: channel {ch:?} is not configured");
        }
        jobs.push(Pending {
            channel: ch.to_owned(),
            body: doc.as_bytes().to_vec(),
        });
    }
    if jobs.is_empty() {
        bail!("no jobs in the input");
    }
    Ok(jobs)
}

/// Publishes every job with confirms; returns how many.
pub async fn publish(config: &Config, jobs: &[Pending]) -> anyhow::Result<usize> {
    let conn = broker::connect(&config.broker, "enqueue").await?;
    let publisher = Publisher::open(&conn, config.command_publish_timeout()).await?;
    let names = Names::new(&config.broker.prefix);
    for (i, job) in jobs.iter().enumerate() {
        let props = BasicProperties::default()
            .with_content_type("application/json".into())
            .with_delivery_mode(2);
        publisher
            .publish(&names.jobs_exchange(), &job.channel, &job.body, props, false)
            .await
            .with_context(|| format!("job {} of {}: publish failed (is the topology declared? run `octopods-worker topology`)", i.saturating_add(1), jobs.len()))?;
    }
    crate::broker::close(&conn, 200, "OK").await;
    Ok(jobs.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> Config {
        Config::from_toml("[[channels]]\nname = \"a\"\napi_key_env = \"X\"\nrate_per_second = 1\n")
            .unwrap()
    }

    #[test]
    fn a_single_object_is_one_job() {
        let jobs = read_jobs("{\n \"job_id\": \"1\"\n}\n", Some("a"), &config()).unwrap();
        assert_eq!(jobs.len(), 1);
    }

    #[test]
    fn json_lines_are_one_job_each_with_their_own_channel() {
        let jobs = read_jobs(
            "{\"channel\":\"a\"}\n\n{\"channel\":\"a\",\"x\":1}\n",
            None,
            &config(),
        )
        .unwrap();
        assert_eq!(jobs.len(), 2);
        assert_eq!(jobs[1].body, b"{\"channel\":\"a\",\"x\":1}");
    }

    #[test]
    fn unknown_channel_and_bad_lines_are_named() {
        let e = read_jobs("{\"job_id\":1}", Some("b"), &config()).unwrap_err();
        assert_eq!(e.to_string(), "line 1: channel \"b\" is not configured");
        let e = read_jobs("{\"channel\":\"a\"}\n{oops\n", None, &config()).unwrap_err();
        assert_eq!(e.to_string(), "line 2: not JSON");
        let e = read_jobs("{\"job_id\":1}", None, &config()).unwrap_err();
        assert!(e.to_string().contains("no channel"));
    }
}
