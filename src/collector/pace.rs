//! The collectors' pace: who reads, how steadily, and when to collect next.
//!
//! Views mark their reads ([`Reads::mark`]): a scrape of `/metrics` by its peer address, an
//! OTLP export, or any other view (status page, `/api/*`). A reader whose last two gaps agree
//! (within 10 %, at least [`STEADY_SLACK`]) is *steady*: a Prometheus scraping on its
//! `scrape_interval`, an OTLP export on its interval. After each cycle the runner asks
//! [`next_wait`] how long to wait:
//!
//! * nobody read for twice `--collector.idle-interval`: the idle interval;
//! * with `--collector.follow-readers` (the default), every reader of the last two idle
//!   intervals steady and slower than `--collector.interval`: the next collection is timed to
//!   end just before the first read that this cycle's figures would reach older than
//!   `--collector.interval` (a lead of twice the last cycle's duration plus 250 ms, at most
//!   half the interval). A Prometheus scraping every 15 s then gets figures well under a
//!   second old, fresher than a fixed 5 s pace gives (up to 5 s), from a third of the
//!   collections;
//! * otherwise (a reader that comes irregularly or faster, a new reader, a steady one that
//!   missed its read): `--collector.interval`, as without the flag.
//!
//! Two Prometheus servers scraping from two addresses are two readers, each followed; two
//! from one address look irregular and get the fixed pace. Events never wait for the pace:
//! gravity's exit, restart and log lines are followed as they happen, and a restart kicks a
//! collection at once.

use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

use crate::base::lock;
use crate::config::Settings;

/// Readers remembered (the least recent is forgotten beyond that).
pub const MAX_READERS: usize = 8;
/// Two gaps closer than this (or 10 % of the gap) make a reader steady.
pub const STEADY_SLACK: Duration = Duration::from_millis(200);
/// Reads of one reader closer than this count as one read (a page and its API call, a
/// retried scrape).
pub const SAME_READ: Duration = Duration::from_millis(100);
/// The shortest lead of a collection timed to a read.
pub const MIN_LEAD: Duration = Duration::from_millis(250);
/// How long a reader counts as present when no idle interval is set.
const PRESENCE_WITHOUT_IDLE: Duration = Duration::from_secs(120);

/// Who read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reader {
    /// A scrape of `/metrics` from this address.
    Scrape(IpAddr),
    /// An OTLP metrics export.
    Otlp,
    /// The status page, `/api/*`, or a read without a known reader.
    View,
}

/// What is known of one reader at a moment: how long since its last read, its last gap and
/// whether it is steady (pure input of [`next_wait`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pace {
    /// Time since its last read.
    pub since_last: Duration,
    /// The gap before its last read (`None`: read once).
    pub gap: Option<Duration>,
    /// Whether its last two gaps agreed.
    pub steady: bool,
}

#[derive(Debug, Clone, Copy)]
struct Seen {
    who: Reader,
    last: Instant,
    gap: Option<Duration>,
    steady: bool,
}

/// Who reads what the collectors produce, and when: the runner's pace follows the readers
/// (see the module doc). A read while the runner is idle wakes it at once.
#[derive(Debug)]
pub struct Reads {
    last: std::sync::Mutex<Instant>,
    readers: std::sync::Mutex<Vec<Seen>>,
    pub(crate) idle: AtomicBool,
    /// The wait the runner chose after its last cycle, in milliseconds (0: none yet).
    pub(crate) wait_ms: AtomicU64,
}

impl Default for Reads {
    fn default() -> Self {
        Reads {
            // The exporter's start counts as a read: it collects at full speed at first.
            last: std::sync::Mutex::new(Instant::now()),
            readers: std::sync::Mutex::new(Vec::new()),
            idle: AtomicBool::new(false),
            wait_ms: AtomicU64::new(0),
        }
    }
}

/// Whether two gaps agree closely enough for a steady reader.
fn agree(a: Duration, b: Duration) -> bool {
    let slack = (a.max(b) / 10).max(STEADY_SLACK);
    a.abs_diff(b) <= slack
}

impl Reads {
    /// Records a read by `who` now; returns whether the runner was idle (the caller wakes it).
    pub fn mark(&self, who: Reader) -> bool {
        let now = Instant::now();
        *lock(&self.last) = now;
        {
            let mut readers = lock(&self.readers);
            match readers.iter_mut().find(|s| s.who == who) {
                Some(s) => {
                    let gap = now.saturating_duration_since(s.last);
                    if gap >= SAME_READ {
                        s.steady = s.gap.is_some_and(|g| agree(g, gap));
                        s.gap = Some(gap);
                        s.last = now;
                    }
                }
                None => {
                    if readers.len() >= MAX_READERS {
                        if let Some(i) = readers
                            .iter()
                            .enumerate()
                            .min_by_key(|(_, s)| s.last)
                            .map(|(i, _)| i)
                        {
                            readers.swap_remove(i);
                        }
                    }
                    readers.push(Seen {
                        who,
                        last: now,
                        gap: None,
                        steady: false,
                    });
                }
            }
        }
        self.idle.swap(false, Ordering::SeqCst)
    }

    /// How long since the last read.
    pub fn since_last(&self) -> Duration {
        lock(&self.last).elapsed()
    }

    /// The readers as of now.
    pub fn paces(&self) -> Vec<Pace> {
        let now = Instant::now();
        lock(&self.readers)
            .iter()
            .map(|s| Pace {
                since_last: now.saturating_duration_since(s.last),
                gap: s.gap,
                steady: s.steady,
            })
            .collect()
    }

    /// Whether the runner is waiting at the idle interval.
    pub fn is_idle(&self) -> bool {
        self.idle.load(Ordering::SeqCst)
    }

    /// The wait the runner chose after its last cycle (`None` before the first).
    pub fn current_wait(&self) -> Option<Duration> {
        match self.wait_ms.load(Ordering::SeqCst) {
            0 => None,
            ms => Some(Duration::from_millis(ms)),
        }
    }
}

/// How long the runner waits after a cycle that took `took`, and whether that is the idle
/// wait (pure; see the module doc).
pub fn next_wait(
    settings: &Settings,
    since_last_read: Duration,
    readers: &[Pace],
    took: Duration,
) -> (Duration, bool) {
    if let Some(idle) = settings.idle_interval {
        if since_last_read >= idle.saturating_mul(2) {
            return (idle, true);
        }
    }
    let interval = settings.interval;
    if !settings.follow_readers {
        return (interval, false);
    }
    let present = settings
        .idle_interval
        .map_or(PRESENCE_WITHOUT_IDLE, |i| i.saturating_mul(2));
    let lead = took
        .saturating_mul(2)
        .saturating_add(MIN_LEAD)
        .min(interval / 2);
    let mut wait: Option<Duration> = None;
    for r in readers.iter().filter(|r| r.since_last < present) {
        let w = match r.gap {
            // steady, slower than the interval, and not overdue
            Some(gap) if r.steady && gap > interval && r.since_last <= gap => {
                let next_read = gap.saturating_sub(r.since_last);
                // this cycle's figures serve the next read if they are not older than the
                // interval by then: aim at the read after it
                let aim = if next_read <= interval {
                    next_read.saturating_add(gap)
                } else {
                    next_read
                };
                aim.saturating_sub(lead)
            }
            _ => interval,
        };
        wait = Some(wait.map_or(w, |x| x.min(w)));
    }
    let cap = settings.idle_interval.unwrap_or(interval).max(interval);
    (wait.unwrap_or(interval).clamp(interval / 2, cap), false)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(args: &[&str]) -> Settings {
        let mut v = vec!["gravity-exporter"];
        v.extend_from_slice(args);
        let cli = <crate::config::Cli as clap::Parser>::try_parse_from(v).expect("valid flags");
        Settings::from_flags(cli.flags).expect("valid flags")
    }

    fn steady(since_last: u64, gap: u64) -> Pace {
        Pace {
            since_last: Duration::from_millis(since_last),
            gap: Some(Duration::from_millis(gap)),
            steady: true,
        }
    }

    #[test]
    fn a_steady_slow_scraper_gets_one_collection_just_before_each_scrape() {
        let s = settings(&[]);
        let took = Duration::from_millis(20);
        // lead = 2 x 20 ms + 250 ms = 290 ms; a cycle right after a scrape (100 ms ago)
        // aims at the next scrape, 14.9 s away
        let (w, idle) = next_wait(&s, Duration::from_millis(100), &[steady(100, 15_000)], took);
        assert!(!idle);
        assert_eq!(w, Duration::from_millis(14_900 - 290));
        // a cycle that ended 290 ms before the scrape serves it: aim at the one after
        let (w, _) = next_wait(
            &s,
            Duration::from_millis(14_710),
            &[steady(14_710, 15_000)],
            took,
        );
        assert_eq!(w, Duration::from_millis(290 + 15_000 - 290));
    }

    #[test]
    fn fast_irregular_new_or_overdue_readers_keep_the_interval() {
        let s = settings(&[]);
        let took = Duration::from_millis(20);
        let five = Duration::from_secs(5);
        // a scraper every 2 s: faster than the interval
        assert_eq!(
            next_wait(&s, Duration::ZERO, &[steady(0, 2_000)], took).0,
            five
        );
        // irregular
        let irregular = Pace {
            steady: false,
            ..steady(1_000, 15_000)
        };
        assert_eq!(next_wait(&s, Duration::ZERO, &[irregular], took).0, five);
        // read once
        let once = Pace {
            since_last: Duration::from_secs(1),
            gap: None,
            steady: false,
        };
        assert_eq!(next_wait(&s, Duration::ZERO, &[once], took).0, five);
        // missed its read (16 s since the last of a 15 s reader)
        assert_eq!(
            next_wait(&s, Duration::ZERO, &[steady(16_000, 15_000)], took).0,
            five
        );
        // a steady reader beside an irregular one: the irregular one sets the pace
        assert_eq!(
            next_wait(&s, Duration::ZERO, &[steady(100, 15_000), irregular], took).0,
            five
        );
        // no reader at all (only the start): the interval
        assert_eq!(next_wait(&s, Duration::ZERO, &[], took).0, five);
    }

    #[test]
    fn two_steady_readers_are_each_served() {
        let s = settings(&[]);
        let took = Duration::from_millis(20);
        // one scrapes 100 ms ago every 15 s, the other in 7 s (every 15 s): the next
        // collection ends before the second one's read
        let (w, _) = next_wait(
            &s,
            Duration::from_millis(100),
            &[steady(100, 15_000), steady(8_000, 15_000)],
            took,
        );
        assert_eq!(w, Duration::from_millis(7_000 - 290));
    }

    #[test]
    fn the_wait_stays_between_half_the_interval_and_the_idle_interval() {
        let s = settings(&[]);
        // a huge cycle: the lead is at most half the interval
        let (w, _) = next_wait(
            &s,
            Duration::from_millis(100),
            &[steady(100, 15_000)],
            Duration::from_secs(60),
        );
        assert_eq!(w, Duration::from_millis(14_900 - 2_500));
        // a reader every 10 minutes: at most the idle interval (60 s) apart
        let (w, _) = next_wait(
            &s,
            Duration::from_secs(1),
            &[steady(1_000, 600_000)],
            Duration::ZERO,
        );
        assert_eq!(w, Duration::from_secs(60));
        // flag off: the interval
        let off = settings(&["--collector.follow-readers=false"]);
        let (w, _) = next_wait(
            &off,
            Duration::from_millis(100),
            &[steady(100, 15_000)],
            Duration::ZERO,
        );
        assert_eq!(w, Duration::from_secs(5));
        // nobody read for two idle intervals: idle
        assert_eq!(
            next_wait(
                &s,
                Duration::from_secs(120),
                &[steady(120_000, 15_000)],
                Duration::ZERO
            ),
            (Duration::from_secs(60), true)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn reads_become_steady_after_two_equal_gaps() {
        let r = Reads::default();
        let p = Reader::Scrape(IpAddr::from([127, 0, 0, 1]));
        r.mark(p);
        tokio::time::advance(Duration::from_secs(15)).await;
        r.mark(p);
        assert!(!r.paces()[0].steady);
        tokio::time::advance(Duration::from_millis(15_050)).await;
        r.mark(p);
        // a second read within 100 ms is the same read
        tokio::time::advance(Duration::from_millis(50)).await;
        r.mark(p);
        let now = r.paces();
        assert_eq!(now.len(), 1);
        assert!(now[0].steady);
        assert_eq!(now[0].gap, Some(Duration::from_millis(15_050)));
        // another reader is remembered apart; a gap far off makes the first unsteady
        r.mark(Reader::Otlp);
        tokio::time::advance(Duration::from_secs(4)).await;
        r.mark(p);
        let now = r.paces();
        assert_eq!(now.len(), 2);
        assert!(!now[0].steady);
        // at most MAX_READERS, the least recent forgotten
        for i in 0..20u8 {
            tokio::time::advance(Duration::from_secs(1)).await;
            r.mark(Reader::Scrape(IpAddr::from([10, 0, 0, i])));
        }
        assert_eq!(r.paces().len(), MAX_READERS);
    }
}
