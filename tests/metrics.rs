//! `GET /metrics`: the Prometheus text format, read with an independent parser, counts exactly
//! the jobs, runs, steps and requests a test made; labels come from the configuration and the
//! route patterns, never from a request; and the route is guarded by the token unless
//! `metrics.public`.
#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::time::Duration;

use openmetrics_parser::{MetricsExposition, PrometheusType, PrometheusValue};
use serde_json::json;

use crate::common::{Builder, TestServer};

const WAIT: Duration = Duration::from_secs(20);
const TOKEN: &str = "metrics-s3cret";

/// A scrape, parsed.
struct Scrape(MetricsExposition<PrometheusType, PrometheusValue>);

/// One series: its labels and its value (a histogram's is its count).
#[derive(Debug)]
struct Series {
    labels: HashMap<String, String>,
    value: f64,
}

impl Scrape {
    /// `GET /metrics` (with the token if given), checked for status and content type, parsed.
    fn take(server: &TestServer, token: Option<&str>) -> Scrape {
        let auth = token.map(|t| format!("Bearer {t}"));
        let headers: Vec<(&str, &str)> = auth.iter().map(|a| ("Authorization", a.as_str())).collect();
        let r = server.request("GET", "/metrics", None, &headers);
        assert_eq!(r.status, 200, "{}", r.text);
        let exposition = openmetrics_parser::prometheus::parse_prometheus(&r.text)
            .unwrap_or_else(|e| panic!("not the Prometheus text format: {e:?}\n{}", r.text));
        Scrape(exposition)
    }

    /// Every series of a family (a histogram's value is its count); panics if it is missing.
    fn series(&self, family: &str) -> Vec<Series> {
        let family = self.0.families.get(family).unwrap_or_else(|| panic!("no family {family}"));
        family
            .iter_samples()
            .map(|sample| {
                let labels = sample.get_labelset().unwrap();
                let labels = labels.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
                let value = match &sample.value {
                    PrometheusValue::Counter(c) => c.value.as_f64(),
                    PrometheusValue::Gauge(n) | PrometheusValue::Unknown(n) => n.as_f64(),
                    PrometheusValue::Histogram(h) => {
                        let count = h.count.unwrap();
                        let inf = h.buckets.iter().find(|b| b.upper_bound.is_infinite()).unwrap();
                        assert_eq!(inf.count.as_f64(), count as f64, "+Inf bucket == count");
                        count as f64
                    }
                    PrometheusValue::Summary(_) => panic!("no summaries are served"),
                };
                Series { labels, value }
            })
            .collect()
    }

    /// The value of the series with exactly these labels (0 when there is no such series).
    fn value(&self, family: &str, labels: &[(&str, &str)]) -> f64 {
        let matching: Vec<_> = self
            .series(family)
            .into_iter()
            .filter(|s| {
                s.labels.len() == labels.len()
                    && labels.iter().all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
            })
            .collect();
        assert!(matching.len() <= 1, "{family}{labels:?}: {matching:?}");
        matching.first().map_or(0.0, |s| s.value)
    }

    /// The sum over the family's series whose labels include these.
    fn sum(&self, family: &str, labels: &[(&str, &str)]) -> f64 {
        self.series(family)
            .iter()
            .filter(|s| labels.iter().all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v)))
            .map(|s| s.value)
            .sum()
    }

    /// Every value the label takes in any family.
    fn label_values(&self, label: &str) -> Vec<String> {
        let mut values: Vec<String> = self
            .0
            .families
            .keys()
            .flat_map(|family| self.series(family))
            .filter_map(|s| s.labels.get(label).cloned())
            .collect();
        values.sort();
        values.dedup();
        values
    }
}

/// Sums `stdoutSize + stderrSize` of these jobs.
fn stored_bytes(server: &TestServer, ids: &[String]) -> u64 {
    ids.iter()
        .map(|id| {
            let job = server.job(id);
            job["stdoutSize"].as_u64().unwrap() + job["stderrSize"].as_u64().unwrap()
        })
        .sum()
}

#[test]
fn counters_match_the_jobs_runs_steps_and_requests_made() {
    let b = Builder::new()
        .script("ok", "echo hello")
        .script("bad", "echo oops >&2; exit 3")
        .script("other", "echo other")
        .script("gone", "echo never")
        .script_entry("slow", "sleep 30", json!({ "mode": "async" }))
        .script("idle", "true")
        .workflows(json!({}));
    let gone = b.dir().join("scripts/gone.sh");
    let server = b.start();
    // Validated at start, gone before its job: the spawn fails.
    std::fs::remove_file(&gone).unwrap();

    let mut ids = Vec::new();
    for (script, times, expected) in [("ok", 3, "succeeded"), ("bad", 2, "failed"), ("other", 1, "succeeded")] {
        for _ in 0..times {
            let r = server.run(script, &[], None);
            assert_eq!(r.status, 200, "{}", r.text);
            assert_eq!(r.body["status"], json!(expected), "{}", r.text);
            ids.push(r.body["jobId"].as_str().unwrap().to_string());
        }
    }
    let r = server.run("gone", &[], None);
    assert_eq!(r.body["status"], json!("failed"), "{}", r.text);
    ids.push(r.body["jobId"].as_str().unwrap().to_string());
    // Unknown script: refused, and its id must become no label.
    let r = server.run("no-such-script", &[], None);
    assert_eq!(r.status, 400, "{}", r.text);
    // An async job, canceled while it runs.
    let slow = server.run_async("slow", &[]);
    server.wait_job(&slow, WAIT, |s| s == "running");
    let r = server.post(&format!("/jobs/{slow}/cancel"), json!({}));
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(server.wait_terminal(&slow, WAIT)["status"], json!("canceled"));
    ids.push(slow.clone());
    // No route; a known route, another method; a method of the client's own.
    assert_eq!(server.get("/no/such/route").status, 404);
    assert_eq!(server.request("DELETE", "/run", None, &[]).status, 405);
    assert_eq!(server.request("BREW", "/jobs", None, &[]).status, 405);

    // A workflow: two command steps journaled, the first label asked again (a replay).
    let source = "script-runner step a -- echo one > /dev/null\n\
                  script-runner step b -- echo two > /dev/null\n\
                  script-runner step a -- echo one > /dev/null\n";
    let run = server.launch_bash(source, json!({}));
    let body = server.wait_run_terminal(&run, WAIT);
    assert_eq!(body["run"]["status"], json!("completed"), "{body}");
    let run_log: u64 = ["stdout", "stderr"]
        .iter()
        .map(|stream| {
            let r = server.get(&format!("/api/script-runs/{run}/logs?stream={stream}"));
            assert_eq!(r.status, 200, "{}", r.text);
            r.body["totalSize"].as_u64().unwrap()
        })
        .sum();

    let m = Scrape::take(&server, None);
    let job = |family: &str, script: &str| m.value(family, &[("script", script)]);
    let ended = |script: &str, status: &str| {
        m.value("script_runner_jobs_ended_total", &[("script", script), ("status", status)])
    };

    // Jobs by script and final status, exactly.
    for (script, started) in [("ok", 3.0), ("bad", 2.0), ("other", 1.0), ("gone", 1.0), ("slow", 1.0), ("idle", 0.0)] {
        assert_eq!(job("script_runner_jobs_started_total", script), started, "started {script}");
        assert_eq!(job("script_runner_job_duration_seconds", script), started, "durations of {script}");
        assert_eq!(job("script_runner_job_queue_wait_seconds", script), started, "waits of {script}");
    }
    assert_eq!(ended("ok", "succeeded"), 3.0);
    assert_eq!(ended("bad", "failed"), 2.0);
    assert_eq!(ended("other", "succeeded"), 1.0);
    assert_eq!(ended("gone", "failed"), 1.0);
    assert_eq!(ended("slow", "canceled"), 1.0);
    assert_eq!(m.sum("script_runner_jobs_ended_total", &[]), 8.0, "no other job ended");
    // Every configured script has its series from the start (at zero), and no other.
    let scripts = m.label_values("script");
    assert_eq!(scripts, ["bad", "gone", "idle", "ok", "other", "slow"], "script labels");
    assert_eq!(ended("idle", "succeeded"), 0.0);
    assert!(m.series("script_runner_jobs_ended_total").iter().any(|s| s.labels["script"] == "idle"));

    assert_eq!(m.value("script_runner_jobs_running", &[]), 0.0);
    assert_eq!(m.value("script_runner_jobs_queued", &[]), 0.0);
    assert_eq!(m.value("script_runner_spawn_failures_total", &[]), 1.0);
    let expected_bytes = stored_bytes(&server, &ids) + run_log;
    assert!(expected_bytes >= 3 * 6 + 2 * 5 + 6, "the jobs' output is stored: {expected_bytes}");
    assert_eq!(m.value("script_runner_log_bytes_total", &[]) as u64, expected_bytes);

    // Runs and steps.
    assert_eq!(m.value("script_runner_runs_ended_total", &[("status", "completed")]), 1.0);
    assert_eq!(m.sum("script_runner_runs_ended_total", &[]), 1.0);
    assert_eq!(m.sum("script_runner_runs", &[]), 0.0, "no live run");
    assert_eq!(m.value("script_runner_approvals_waiting", &[]), 0.0);
    assert_eq!(m.value("script_runner_steps_recorded_total", &[("type", "command")]), 2.0);
    assert_eq!(m.sum("script_runner_steps_recorded_total", &[]), 2.0);
    assert_eq!(m.value("script_runner_steps_replayed_total", &[("type", "command")]), 1.0);
    assert_eq!(m.sum("script_runner_steps_replayed_total", &[]), 1.0);

    // Requests by route pattern, method and status.
    let http = |method: &str, route: &str, status: &str| {
        m.value("script_runner_http_requests_total", &[("method", method), ("route", route), ("status", status)])
    };
    assert_eq!(http("POST", "/run", "200"), 7.0, "sync runs");
    assert_eq!(http("POST", "/run", "202"), 1.0, "the async run");
    assert_eq!(http("POST", "/run", "400"), 1.0, "the unknown script");
    assert_eq!(http("POST", "/jobs/{id}/cancel", "200"), 1.0);
    assert_eq!(http("GET", "unmatched", "404"), 1.0);
    assert_eq!(http("DELETE", "/run", "405"), 1.0);
    assert_eq!(http("other", "/jobs", "405"), 1.0, "a method outside the list is `other`");
    assert!(!m.label_values("method").contains(&"BREW".to_string()));
    assert_eq!(http("POST", "/api/script-runs", "201"), 1.0);
    assert!(http("POST", "/api/internal/script-runs/{id}/steps/{label}/begin", "200") >= 3.0);
    assert!(m.sum("script_runner_http_requests_total", &[("route", "/jobs/{id}")]) >= 1.0);
    assert_eq!(
        m.value("script_runner_http_request_duration_seconds", &[("method", "POST"), ("route", "/run")]),
        9.0,
        "one latency per /run request"
    );
    let routes = m.label_values("route");
    assert!(routes.iter().all(|r| r == "unmatched" || r.starts_with('/')), "{routes:?}");
    assert!(!routes.iter().any(|r| r.contains("job_") || r.contains("run_")), "no ids in routes: {routes:?}");
    assert!(!m.label_values("script").contains(&"no-such-script".to_string()));

    // Every write committed was timed.
    assert!(m.value("script_runner_db_commit_duration_seconds", &[]) >= 8.0);
}

#[test]
fn approvals_waiting_and_live_runs_are_read_when_scraped() {
    let server = Builder::new().workflows(json!({})).start();
    let run = server.launch_bash("script-runner step gate --approval 'go?' > /dev/null\n", json!({}));
    server.wait_run(&run, WAIT, |s| s == "awaiting");

    let m = Scrape::take(&server, None);
    assert_eq!(m.value("script_runner_approvals_waiting", &[]), 1.0);
    assert_eq!(m.value("script_runner_runs", &[("status", "awaiting")]), 1.0);
    assert_eq!(m.value("script_runner_runs", &[("status", "running")]), 0.0);
    assert_eq!(m.value("script_runner_steps_recorded_total", &[("type", "approval")]), 1.0);

    let r = server.post(&format!("/api/script-runs/{run}/approvals/gate"), json!({ "approved": true }));
    assert_eq!(r.status, 200, "{}", r.text);
    let body = server.wait_run_terminal(&run, WAIT);
    assert_eq!(body["run"]["status"], json!("completed"), "{body}");

    let m = Scrape::take(&server, None);
    assert_eq!(m.value("script_runner_approvals_waiting", &[]), 0.0);
    assert_eq!(m.sum("script_runner_runs", &[]), 0.0);
    assert_eq!(m.value("script_runner_runs_ended_total", &[("status", "completed")]), 1.0);
    let decided = m.value(
        "script_runner_http_requests_total",
        &[("method", "POST"), ("route", "/api/script-runs/{id}/approvals/{label}"), ("status", "200")],
    );
    assert_eq!(decided, 1.0);
}

#[test]
fn metrics_need_the_token_unless_metrics_public() {
    let guarded = Builder::new().server("authToken", json!(TOKEN)).script("s", "true").start();
    let r = guarded.get("/metrics");
    assert_eq!(r.status, 401, "{}", r.text);
    assert_eq!(r.body["error"]["code"], json!("UNAUTHORIZED"), "{}", r.text);
    let m = Scrape::take(&guarded, Some(TOKEN));
    // The refused scrape was counted, under its route.
    let refused = [("method", "GET"), ("route", "/metrics"), ("status", "401")];
    assert_eq!(m.value("script_runner_http_requests_total", &refused), 1.0);

    // The text format's content type.
    let response = ureq::get(&format!("{}/metrics", guarded.base))
        .set("Authorization", &format!("Bearer {TOKEN}"))
        .call()
        .unwrap();
    assert!(response.content_type() == "text/plain", "{}", response.content_type());
    let content_type = response.header("Content-Type").unwrap_or_default();
    assert!(content_type.starts_with("text/plain; version=0.0.4"), "{content_type}");

    let public = Builder::new()
        .server("authToken", json!(TOKEN))
        .top("metrics", json!({ "public": true }))
        .script("s", "true")
        .start();
    let m = Scrape::take(&public, None);
    assert_eq!(m.value("script_runner_jobs_started_total", &[("script", "s")]), 0.0);
    // Only /metrics is opened.
    assert_eq!(public.get("/jobs").status, 401);
    assert_eq!(public.run("s", &[], None).status, 401);
}

#[test]
fn an_unknown_metrics_key_is_a_config_error() {
    let deployment = Builder::new().top("metrics", json!({ "public": true, "path": "/m" })).script("s", "true").write();
    let out = deployment.check_config();
    let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(!out.status.success(), "{said}");
    assert!(said.contains("metrics") && said.contains("unknown field `path`"), "{said}");
}
