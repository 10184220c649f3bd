//! Which of the routes' topics exist: one metadata request (never a group join),
//! compared with the source topics routes name and the regexes they subscribe to.
//! `fieldcrypt run` asks at start-up and every [`WATCH_INTERVAL`], so a missing
//! source topic is named in the log and in `/health/ready`; `fieldcrypt validate`
//! asks once.

use std::time::Duration;

use rdkafka::client::Client;
use rdkafka::ClientContext;
use regex::Regex;

use crate::kafka::route::RouteConfig;

/// How often `run` looks again.
pub const WATCH_INTERVAL: Duration = Duration::from_secs(30);

/// What the brokers have of the routes' topics.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TopicReport {
    /// Brokers in the metadata answer.
    pub brokers: usize,
    /// Literal source topics the brokers do not have.
    pub missing: Vec<String>,
    /// Regex sources that match no topic (`^cdc\..*`).
    pub unmatched_patterns: Vec<String>,
    /// Source topics that exist (literal, or matching a regex).
    pub sources: Vec<String>,
}

/// Compares the topics the brokers list with the routes' sources (pure).
pub fn compare(routes: &[RouteConfig], topics: &[String]) -> TopicReport {
    let mut r = TopicReport::default();
    for route in routes {
        if route.source.starts_with('^') {
            // An invalid regex is refused by config validation before this.
            let Ok(re) = Regex::new(&route.source) else {
                continue;
            };
            let hits: Vec<&String> = topics.iter().filter(|t| re.is_match(t)).collect();
            if hits.is_empty() {
                r.unmatched_patterns.push(route.source.clone());
            }
            r.sources.extend(hits.into_iter().cloned());
        } else if topics.contains(&route.source) {
            r.sources.push(route.source.clone());
        } else {
            r.missing.push(route.source.clone());
        }
    }
    for v in [&mut r.missing, &mut r.unmatched_patterns, &mut r.sources] {
        v.sort();
        v.dedup();
    }
    r
}

/// Connects with the config's Kafka settings (a producer: no group join) and asks
/// once, with `timeout` (`fieldcrypt validate`). A `kafka.properties` entry that
/// librdkafka refuses is named.
pub async fn probe(
    config: &crate::config::Config,
    timeout: Duration,
) -> Result<TopicReport, super::PipelineError> {
    let client: rdkafka::producer::BaseProducer = super::client_config(config, &[])
        .create()
        .map_err(|e| super::client_error(config, e))?;
    let routes = config.routes.clone();
    tokio::task::spawn_blocking(move || {
        fetch(
            rdkafka::producer::Producer::client(&client),
            &routes,
            timeout,
        )
    })
    .await
    .map_err(|e| super::PipelineError::Setup(e.to_string()))?
    .map_err(super::PipelineError::Kafka)
}

/// Asks the brokers for every topic (blocking: run it off the async threads).
pub fn fetch<C: ClientContext>(
    client: &Client<C>,
    routes: &[RouteConfig],
    timeout: Duration,
) -> Result<TopicReport, rdkafka::error::KafkaError> {
    let md = client.fetch_metadata(None, timeout)?;
    let topics: Vec<String> = md
        .topics()
        .iter()
        .filter(|t| t.error().is_none())
        .map(|t| t.name().to_string())
        .collect();
    let mut r = compare(routes, &topics);
    r.brokers = md.brokers().len();
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(source: &str) -> RouteConfig {
        RouteConfig {
            source: source.into(),
            target: "secure.${topic}".into(),
            ..Default::default()
        }
    }

    #[test]
    fn missing_sources_and_unmatched_patterns_are_named() {
        let topics = vec!["cdc.a".to_string(), "cdc.b".into(), "orders".into()];
        let r = compare(
            &[
                route("orders"),
                route("payments"),
                route("^cdc\\..*"),
                route("^inv\\..*"),
            ],
            &topics,
        );
        assert_eq!(r.missing, vec!["payments"]);
        assert_eq!(r.unmatched_patterns, vec!["^inv\\..*"]);
        assert_eq!(r.sources, vec!["cdc.a", "cdc.b", "orders"]);
    }
}
