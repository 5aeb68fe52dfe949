//! `mesh-demo traffic`: a steady rate of GETs to the page, with a one-line summary every
//! second, so a reader can watch the page keep working while instances come and go.
//!
//! Bounded by construction: the URL must be a loopback address (checked by the flag's
//! parser), the rate is at most 1000/s, every request has a deadline, and sending stops
//! after `--duration` or at Ctrl-C. Requests in flight are then awaited, never abandoned.

use std::time::Duration;

use tokio::{
    sync::mpsc,
    time::{Instant, MissedTickBehavior},
};

use crate::{
    TrafficConfig,
    http::{Client, GetError},
    stats::{Outcome, Summary, Window},
};

/// Where the marketplace page names the instance that answered.
const SERVED_BY: &str = "Served by recommendations instance <code>";

/// Sends the traffic, printing a line per second and a total, which it also returns.
pub async fn run(config: TrafficConfig) -> Summary {
    let client = Client::default();
    println!(
        "mesh-demo traffic: GET {} at {}/s for {} (Ctrl-C stops early)",
        config.url,
        config.rate,
        humantime::format_duration(config.duration)
    );

    // Each request is its own task, so a slow answer never lowers the rate; in flight there
    // are at most rate × timeout of them, since each gives up after `timeout`.
    let (done_tx, mut done) = mpsc::unbounded_channel::<(Duration, Outcome)>();
    let mut sender = Some(done_tx);
    let start = Instant::now();
    let mut ticks = tokio::time::interval(Duration::from_secs(1) / config.rate);
    // After a stall, carry on at the set rate rather than bursting to catch up.
    ticks.set_missed_tick_behavior(MissedTickBehavior::Skip);
    let second = Duration::from_secs(1);
    let mut report = tokio::time::interval_at(start + second, second);
    let stop_at = tokio::time::sleep_until(start + config.duration);
    tokio::pin!(stop_at);
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);

    let mut window = Window::default();
    let mut total = Window::default();
    loop {
        tokio::select! {
            _ = ticks.tick(), if sender.is_some() => {
                let done_tx = sender.clone().expect("checked by the guard");
                let (client, url, timeout) = (client.clone(), config.url.clone(), config.timeout);
                tokio::spawn(async move {
                    let sent = Instant::now();
                    let outcome = outcome(client.get(&url, timeout).await);
                    let _ = done_tx.send((sent.elapsed(), outcome));
                });
            }
            finished = done.recv() => match finished {
                Some((latency, outcome)) => window.record(latency, outcome),
                // Sending stopped and every request has answered or timed out.
                None => break,
            },
            _ = report.tick() => {
                let summary = window.summary();
                let elapsed = start.elapsed().as_secs();
                println!("[{elapsed:>4}s] {:>4} req/s  {}", summary.count, summary.describe());
                total.absorb(&mut window);
            }
            () = &mut stop_at, if sender.is_some() => sender = None,
            _ = &mut ctrl_c, if sender.is_some() => sender = None,
        }
    }
    total.absorb(&mut window);
    let summary = total.summary();
    println!(
        "total: {} requests in {:.1}s  {}",
        summary.count,
        start.elapsed().as_secs_f64(),
        summary.describe()
    );
    summary
}

fn outcome(result: Result<crate::http::Response, GetError>) -> Outcome {
    match result {
        Ok(response) if response.status.is_success() => Outcome::Ok {
            served_by: served_by(&response.text()),
        },
        Ok(response) => Outcome::Failed(format!("HTTP {}", response.status.as_u16())),
        Err(GetError::Timeout(_)) => Outcome::Failed("timeout".to_owned()),
        Err(GetError::Transport(reason)) => Outcome::Failed(reason),
    }
}

/// The instance named on the marketplace page, if the page names one.
pub fn served_by(page: &str) -> Option<String> {
    let start = page.find(SERVED_BY)? + SERVED_BY.len();
    let len = page[start..].find("</code>")?;
    Some(page[start..start + len].to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_serving_instance() {
        let page = "<ul>\n<li>Murder on the Orient Express</li>\n</ul>\n\
                    <p>Served by recommendations instance <code>recommendations-2</code>.</p>";
        assert_eq!(served_by(page).as_deref(), Some("recommendations-2"));
        assert_eq!(served_by("<h1>Recommendations are unavailable</h1>"), None);
        assert_eq!(
            served_by("Served by recommendations instance <code>cut"),
            None
        );
    }
}
