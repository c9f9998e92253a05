//! The crate's `tracing` spans (README, Traces): discovery, one failover as one trace (its
//! search, the confirmation of the new writer, the pools' retarget under it), credential
//! fetches and the retry helper's attempts, read through a recording layer across a writer
//! crash, both flavours, default settings.

mod support;

use std::collections::BTreeMap;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use aurora_pool::Role;
use aurora_pool::testing::LocalCluster;
use support::eventually;
use support::flavour::{Flavour, connect, flavour_tests};
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;

/// A span as the layer saw it: its name, its parent's id and its fields as text.
#[derive(Debug, Clone)]
struct Seen {
    name: &'static str,
    parent: Option<u64>,
    fields: BTreeMap<String, String>,
}

/// Every span of the process, by id (ids are not reused while a span lives; a later span
/// with a reused id replaces a closed one, which the tests do not look up again).
fn spans() -> &'static Mutex<Vec<(u64, Seen)>> {
    static SPANS: OnceLock<Mutex<Vec<(u64, Seen)>>> = OnceLock::new();
    SPANS.get_or_init(|| {
        let subscriber = tracing_subscriber::registry().with(Recorder);
        tracing::subscriber::set_global_default(subscriber).expect("the only subscriber");
        Mutex::new(Vec::new())
    })
}

struct Fields<'a>(&'a mut BTreeMap<String, String>);

impl Visit for Fields<'_> {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.0.insert(
            field.name().to_owned(),
            format!("{value:?}").trim_matches('"').to_owned(),
        );
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().to_owned(), value.to_owned());
    }
}

struct Recorder;

impl<S> tracing_subscriber::Layer<S> for Recorder
where
    S: tracing::Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        let parent = ctx
            .span(id)
            .and_then(|span| span.parent())
            .map(|parent| parent.id().into_u64());
        let mut fields = BTreeMap::new();
        attrs.record(&mut Fields(&mut fields));
        let seen = Seen {
            name: attrs.metadata().name(),
            parent,
            fields,
        };
        spans().lock().unwrap().push((id.into_u64(), seen));
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, _: Context<'_, S>) {
        let mut spans = spans().lock().unwrap();
        if let Some((_, seen)) = spans.iter_mut().rev().find(|(i, _)| *i == id.into_u64()) {
            values.record(&mut Fields(&mut seen.fields));
        }
    }
}

/// The spans named `name` whose `field` is `value`.
fn named(name: &str, field: &str, value: &str) -> Vec<(u64, Seen)> {
    spans()
        .lock()
        .unwrap()
        .iter()
        .filter(|(_, s)| s.name == name && s.fields.get(field).map(String::as_str) == Some(value))
        .cloned()
        .collect()
}

/// The names of the spans whose parent is `id`.
fn children(id: u64) -> Vec<&'static str> {
    spans()
        .lock()
        .unwrap()
        .iter()
        .filter(|(_, s)| s.parent == Some(id))
        .map(|(_, s)| s.name)
        .collect()
}

async fn a_failover_is_one_trace<F: Flavour>(test: &str) {
    spans();
    let cluster = LocalCluster::start(2).await.expect("cluster");
    let pool = connect::<F>(&cluster, test, "").await;
    let cluster_id = pool.config().cluster_id.clone();
    assert_eq!(
        named("aurora_pool.discovery", "cluster_id", &cluster_id).len(),
        1,
        "discovery"
    );
    pool.run_text(Role::Writer, support::flavour::INSTANCE_ID)
        .await
        .expect("a write through the retry helper");
    let attempts = named("aurora_pool.attempt", "role", "Writer");
    assert!(
        attempts
            .iter()
            .any(|(_, s)| s.fields.get("attempt").map(String::as_str) == Some("1")),
        "no attempt span: {attempts:?}"
    );
    assert!(
        !spans()
            .lock()
            .unwrap()
            .iter()
            .filter(|(_, s)| s.name == "aurora_pool.credentials")
            .collect::<Vec<_>>()
            .is_empty(),
        "no credential fetch span"
    );

    cluster
        .failover("instance-2", None)
        .await
        .expect("failover");
    let followed = eventually(Duration::from_secs(15), || async {
        pool.run_text(Role::Writer, support::flavour::INSTANCE_ID)
            .await
            .is_ok_and(|id| id == "instance-2")
    })
    .await;
    assert!(followed, "writes did not follow: {}", pool.topology());
    let failovers = named("aurora_pool.failover", "cluster_id", &cluster_id);
    assert_eq!(failovers.len(), 1, "one failover, one trace: {failovers:?}");
    let (id, failover) = &failovers[0];
    assert_eq!(failover.parent, None, "a failover is a trace of its own");
    for (field, value) in [
        ("old_writer", "instance-1"),
        ("new_writer", "instance-2"),
        ("outcome", "succeeded"),
    ] {
        assert_eq!(
            failover.fields.get(field).map(String::as_str),
            Some(value),
            "{failover:?}"
        );
    }
    assert!(failover.fields.contains_key("elapsed_ms"), "{failover:?}");
    let retargeted = eventually(Duration::from_secs(5), || async {
        children(*id).contains(&"aurora_pool.failover.retarget")
    })
    .await;
    let phases = children(*id);
    assert!(
        retargeted,
        "the pools' retarget is not in the failover's trace: {phases:?}"
    );
    for phase in [
        "aurora_pool.failover.search",
        "aurora_pool.failover.confirm",
    ] {
        assert!(phases.contains(&phase), "{phase} missing: {phases:?}");
    }
    pool.close().await;
}

flavour_tests!(a_failover_is_one_trace);
