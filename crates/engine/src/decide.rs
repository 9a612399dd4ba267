//! [`FilterDecider`]: from a filter's matches to triggers and action schedules.
//!
//! It owns a filter's retry window and its jail: the values that triggered
//! and still have delayed actions pending. A match for a jailed value is a
//! duplicate and never counts toward `retry`; the `duplicate` policy decides
//! what it does (extend the pending actions, rerun every action, or nothing).
//! Each trigger comes with the actions it schedules and when they are due,
//! already filtered by `ipv4only`/`ipv6only`. The caller runs or prints them;
//! nothing here executes anything.

use crate::pattern::value_is_ipv6;
use crate::score::{Crossing, ScoreBoard, ScorePlan};
use crate::window::RetryWindow;
use crate::{Key, KeyMap, Time, Values};

/// What a match of an already triggered value does (`duplicate`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DuplicatePolicy {
    /// Push the pending actions back as if the trigger happened now.
    #[default]
    Extend,
    /// Run every action again, keeping the earlier pending ones too.
    Rerun,
    /// Do nothing until the pending actions have run.
    Ignore,
}

impl DuplicatePolicy {
    pub fn name(self) -> &'static str {
        match self {
            DuplicatePolicy::Extend => "extend",
            DuplicatePolicy::Rerun => "rerun",
            DuplicatePolicy::Ignore => "ignore",
        }
    }
}

/// `ipv4only` / `ipv6only`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IpOnly {
    V4,
    V6,
}

/// An action of a filter, as far as scheduling is concerned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ActionSpec {
    pub name: String,
    /// Delay after the trigger, in milliseconds.
    pub after: Option<Time>,
    pub onexit: bool,
    pub oneshot: bool,
    pub ip_only: Option<IpOnly>,
}

/// Everything that decides when a filter triggers and what it schedules.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FilterPlan {
    /// Matches needed to trigger; 1 means every match triggers.
    pub retry: u32,
    /// Milliseconds a match counts for.
    pub retry_period: Time,
    pub duplicate: DuplicatePolicy,
    pub actions: Vec<ActionSpec>,
    /// Which value holds the IP that `ipv4only`/`ipv6only` look at.
    pub ip_slot: Option<usize>,
}

impl FilterPlan {
    /// The longest `after` among the actions: how long a trigger stays jailed.
    pub fn longest_delay(&self) -> Option<Time> {
        self.actions.iter().filter_map(|a| a.after).max()
    }

    /// Whether `action` runs for `values` at all: `ipv4only`/`ipv6only`
    /// look at the value in [`FilterPlan::ip_slot`].
    pub fn action_applies(&self, action: usize, values: &[String]) -> bool {
        let Some(spec) = self.actions.get(action) else {
            return false;
        };
        let is_v6 = self
            .ip_slot
            .and_then(|slot| values.get(slot))
            .map(|v| value_is_ipv6(v));
        !matches!(
            (spec.ip_only, is_v6),
            (Some(IpOnly::V4), Some(true)) | (Some(IpOnly::V6), Some(false))
        )
    }
}

/// An action due at a given time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScheduledAction {
    /// Index into [`FilterPlan::actions`].
    pub action: usize,
    pub at: Time,
}

/// How a trigger relates to earlier ones of the same value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TriggerKind {
    /// A fresh trigger: every action is scheduled.
    New,
    /// A duplicate under `extend`: only delayed actions, rescheduled from
    /// now; they replace the pending ones.
    Extend,
    /// A duplicate under `rerun`: every action again, beside the pending ones.
    Rerun,
}

/// A filter triggered for some values.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Trigger {
    pub values: Values,
    pub time: Time,
    pub kind: TriggerKind,
    pub actions: Vec<ScheduledAction>,
}

/// What one match did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Counted toward `retry`; `count` matches are now in the window.
    Counted {
        count: usize,
    },
    Trigger(Trigger),
    /// A duplicate under `ignore`.
    DuplicateIgnored,
}

/// The decision state of one filter.
#[derive(Debug, Clone)]
pub struct FilterDecider {
    plan: FilterPlan,
    window: RetryWindow,
    /// Jailed values and when their last delayed action is due.
    jail: KeyMap<Time>,
    jail_inserts_since_sweep: usize,
    /// Inserts allowed before the next sweep (see [`RetryWindow`]).
    jail_sweep_every: usize,
    /// A filter with a `score` block: its scores, weights, fallback actions.
    score: Option<ScoreMode>,
}

/// What a filter with a `score` block adds to its decider.
#[derive(Debug, Clone)]
struct ScoreMode {
    board: ScoreBoard,
    /// Weight per regex of the filter.
    weights: Vec<i64>,
    /// Actions that run when a score falls back to the threshold or below
    /// (and only then).
    fallback: Vec<usize>,
}

/// What one weighted match did (a filter with a `score` block).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ScoreDecision {
    /// The score moved (or not) without crossing the threshold.
    Scored { score: i64 },
    /// The score went above the threshold: the filter triggers (its
    /// actions but the fallback ones).
    Trigger { score: i64, trigger: Trigger },
    /// The score fell back to the threshold or below: the fallback actions
    /// run, the value leaves the jail.
    Fallback { score: i64, trigger: Trigger },
}

impl FilterDecider {
    pub fn new(plan: FilterPlan) -> Self {
        FilterDecider {
            window: RetryWindow::new(plan.retry, plan.retry_period),
            plan,
            jail: KeyMap::default(),
            jail_inserts_since_sweep: 0,
            jail_sweep_every: 1024,
            score: None,
        }
    }

    /// A decider for a filter with a `score` block: `weights` per regex,
    /// `fallback` the indices of the actions that run on a fallback.
    pub fn with_score(
        plan: FilterPlan,
        score: ScorePlan,
        weights: Vec<i64>,
        fallback: Vec<usize>,
    ) -> Self {
        let mut decider = FilterDecider::new(plan);
        decider.score = Some(ScoreMode {
            board: ScoreBoard::new(score),
            weights,
            fallback,
        });
        decider
    }

    /// The score board of a filter with a `score` block.
    pub fn scores(&self) -> Option<&ScoreBoard> {
        self.score.as_ref().map(|s| &s.board)
    }

    /// Handles one match of `values` by regex number `regex` of a filter
    /// with a `score` block; `None` for a filter without one.
    pub fn on_weighted_match(
        &mut self,
        values: Values,
        regex: usize,
        now: Time,
    ) -> Option<ScoreDecision> {
        let mode = self.score.as_mut()?;
        let weight = mode.weights.get(regex).copied().unwrap_or(0);
        let update = mode.board.apply(values.clone(), weight, now);
        let score = update.score;
        Some(match update.crossing {
            None => ScoreDecision::Scored { score },
            Some(Crossing::Above) => {
                let fallback = mode.fallback.clone();
                let key = Key::from_values(&values);
                let mut trigger = self.trigger(&key, values, now, TriggerKind::New);
                trigger.actions.retain(|a| !fallback.contains(&a.action));
                ScoreDecision::Trigger { score, trigger }
            }
            Some(Crossing::Below) => {
                let actions = mode
                    .fallback
                    .iter()
                    .copied()
                    .filter(|&action| self.plan.action_applies(action, &values))
                    .map(|action| ScheduledAction {
                        action,
                        at: now.saturating_add(self.plan.actions[action].after.unwrap_or(0)),
                    })
                    .collect();
                self.jail.remove(&Key::from_values(&values));
                ScoreDecision::Fallback {
                    score,
                    trigger: Trigger {
                        values,
                        time: now,
                        kind: TriggerKind::New,
                        actions,
                    },
                }
            }
        })
    }

    pub fn plan(&self) -> &FilterPlan {
        &self.plan
    }

    pub fn window(&self) -> &RetryWindow {
        &self.window
    }

    /// Handles one accepted match of `values` at `now`.
    pub fn on_match(&mut self, values: Values, now: Time) -> Decision {
        let key = Key::from_values(&values);
        self.on_match_key(&key, values, now)
    }

    /// [`FilterDecider::on_match`] for a caller that already has the key
    /// of `values`.
    pub fn on_match_key(&mut self, key: &Key, values: Values, now: Time) -> Decision {
        if self.is_jailed_key(key, now) {
            return self.duplicate(key, values, now);
        }
        if self.window.record(key, now) {
            Decision::Trigger(self.trigger(key, values, now, TriggerKind::New))
        } else {
            Decision::Counted {
                count: self.window.count(key, now),
            }
        }
    }

    /// Acts as if the filter triggered for `values` at `now`, bypassing the
    /// retry count (the `trigger` command). A jailed value is still a
    /// duplicate, so the policy applies as for a real trigger.
    pub fn force_trigger(&mut self, values: Values, now: Time) -> Decision {
        let key = Key::from_values(&values);
        if self.is_jailed_key(&key, now) {
            return self.duplicate(&key, values, now);
        }
        self.window.forget(&key);
        Decision::Trigger(self.trigger(&key, values, now, TriggerKind::New))
    }

    /// Whether `values` triggered and still has delayed actions pending.
    pub fn is_jailed(&self, values: &[String], now: Time) -> bool {
        self.is_jailed_key(&Key::from_values(values), now)
    }

    /// [`FilterDecider::is_jailed`] by key.
    pub fn is_jailed_key(&self, key: &Key, now: Time) -> bool {
        self.jail.get(key).is_some_and(|&until| now < until)
    }

    /// When the jail of `values` ends (its trigger's time plus the longest
    /// `after`), if it is jailed at all.
    pub fn jailed_until(&self, values: &[String]) -> Option<Time> {
        self.jail.get(&Key::from_values(values)).copied()
    }

    /// Forgets everything about `values` (flush): its counted matches and
    /// its jail entry. Returns whether anything was known.
    pub fn forget(&mut self, values: &Key) -> bool {
        let matched = self.window.forget(values);
        self.jail.remove(values).is_some() || matched
    }

    /// Room for `additional` more jailed values (a restore of many).
    pub fn reserve_jail(&mut self, additional: usize) {
        self.jail.reserve(additional);
    }

    /// Restores a persisted trigger: `values` jailed as if triggered at `time`.
    pub fn restore_trigger(&mut self, values: &Key, time: Time) {
        if let Some(delay) = self.plan.longest_delay() {
            let until = time.saturating_add(delay);
            let (_, entry) = self.jail.get_or_insert_with(values, || until);
            *entry = (*entry).max(until);
        }
    }

    /// Restores a persisted match inside the retry window.
    pub fn restore_match(&mut self, values: &Key, time: Time) {
        self.window.restore(values, time);
    }

    /// Drops expired window entries and jail entries.
    pub fn sweep(&mut self, now: Time) {
        self.window.sweep(now);
        self.jail.retain(|_, until| now < *until);
        self.jail_inserts_since_sweep = 0;
        self.jail_sweep_every = self.jail.len().max(1024);
    }

    /// Jailed values and when their last delayed action is due.
    pub fn jailed(&self) -> impl Iterator<Item = (&Key, Time)> {
        self.jail.iter().map(|(v, &until)| (v, until))
    }

    fn duplicate(&mut self, key: &Key, values: Values, now: Time) -> Decision {
        match self.plan.duplicate {
            DuplicatePolicy::Ignore => Decision::DuplicateIgnored,
            DuplicatePolicy::Extend => {
                Decision::Trigger(self.trigger(key, values, now, TriggerKind::Extend))
            }
            DuplicatePolicy::Rerun => {
                Decision::Trigger(self.trigger(key, values, now, TriggerKind::Rerun))
            }
        }
    }

    fn trigger(&mut self, key: &Key, values: Values, now: Time, kind: TriggerKind) -> Trigger {
        let actions = self
            .plan
            .actions
            .iter()
            .enumerate()
            .filter(|(_, a)| kind != TriggerKind::Extend || a.after.is_some())
            .filter(|(action, _)| self.plan.action_applies(*action, &values))
            .map(|(action, a)| ScheduledAction {
                action,
                at: now.saturating_add(a.after.unwrap_or(0)),
            })
            .collect();
        if let Some(delay) = self.plan.longest_delay() {
            self.jail_inserts_since_sweep += 1;
            if self.jail_inserts_since_sweep > self.jail_sweep_every {
                self.sweep(now);
            }
            self.jail.insert(key.clone(), now.saturating_add(delay));
        }
        Trigger {
            values,
            time: now,
            kind,
            actions,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn action(name: &str, after: Option<Time>) -> ActionSpec {
        ActionSpec {
            name: name.into(),
            after,
            onexit: false,
            oneshot: false,
            ip_only: None,
        }
    }

    fn plan(duplicate: DuplicatePolicy) -> FilterPlan {
        FilterPlan {
            retry: 2,
            retry_period: 60_000,
            duplicate,
            actions: vec![action("ban", None), action("unban", Some(3_600_000))],
            ip_slot: Some(0),
        }
    }

    fn v(s: &str) -> Values {
        vec![s.to_string()].into_boxed_slice()
    }

    fn trigger(d: Decision) -> Trigger {
        match d {
            Decision::Trigger(t) => t,
            other => panic!("expected a trigger, got {other:?}"),
        }
    }

    #[test]
    fn a_trigger_schedules_every_action_at_its_delay() {
        let mut d = FilterDecider::new(plan(DuplicatePolicy::Extend));
        assert_eq!(
            d.on_match(v("192.0.2.1"), 0),
            Decision::Counted { count: 1 }
        );
        let t = trigger(d.on_match(v("192.0.2.1"), 1_000));
        assert_eq!(t.kind, TriggerKind::New);
        assert_eq!(
            t.actions,
            vec![
                ScheduledAction {
                    action: 0,
                    at: 1_000
                },
                ScheduledAction {
                    action: 1,
                    at: 3_601_000
                }
            ]
        );
    }

    #[test]
    fn extend_reschedules_only_delayed_actions_without_counting() {
        let mut d = FilterDecider::new(plan(DuplicatePolicy::Extend));
        d.on_match(v("a"), 0);
        trigger(d.on_match(v("a"), 0));
        let t = trigger(d.on_match(v("a"), 600_000));
        assert_eq!(t.kind, TriggerKind::Extend);
        assert_eq!(
            t.actions,
            vec![ScheduledAction {
                action: 1,
                at: 4_200_000
            }]
        );
        assert!(d.is_jailed(&v("a"), 4_199_999));
        assert!(!d.is_jailed(&v("a"), 4_200_000));
    }

    #[test]
    fn rerun_schedules_everything_again() {
        let mut d = FilterDecider::new(plan(DuplicatePolicy::Rerun));
        d.on_match(v("a"), 0);
        trigger(d.on_match(v("a"), 0));
        let t = trigger(d.on_match(v("a"), 10));
        assert_eq!(t.kind, TriggerKind::Rerun);
        assert_eq!(t.actions.len(), 2);
    }

    #[test]
    fn ignore_drops_duplicates_until_the_jail_expires() {
        let mut d = FilterDecider::new(plan(DuplicatePolicy::Ignore));
        d.on_match(v("a"), 0);
        trigger(d.on_match(v("a"), 0));
        assert_eq!(d.on_match(v("a"), 10), Decision::DuplicateIgnored);
        assert_eq!(
            d.on_match(v("a"), 3_600_000),
            Decision::Counted { count: 1 }
        );
    }

    #[test]
    fn without_delayed_actions_nothing_is_jailed() {
        let mut d = FilterDecider::new(FilterPlan {
            retry: 1,
            retry_period: 0,
            duplicate: DuplicatePolicy::Ignore,
            actions: vec![action("alert", None)],
            ip_slot: None,
        });
        assert_eq!(trigger(d.on_match(v("a"), 0)).kind, TriggerKind::New);
        assert_eq!(trigger(d.on_match(v("a"), 1)).kind, TriggerKind::New);
    }

    #[test]
    fn ip_only_actions_follow_the_address_family() {
        let mut p = plan(DuplicatePolicy::Extend);
        p.retry = 1;
        p.actions = vec![
            ActionSpec {
                ip_only: Some(IpOnly::V4),
                ..action("ban4", None)
            },
            ActionSpec {
                ip_only: Some(IpOnly::V6),
                ..action("ban6", None)
            },
        ];
        let mut d = FilterDecider::new(p);
        let t4 = trigger(d.on_match(v("192.0.2.1"), 0));
        assert_eq!(t4.actions, vec![ScheduledAction { action: 0, at: 0 }]);
        let t6 = trigger(d.on_match(v("2001:db8::/64"), 0));
        assert_eq!(t6.actions, vec![ScheduledAction { action: 1, at: 0 }]);
    }

    #[test]
    fn force_trigger_bypasses_retry_and_forget_unjails() {
        let mut d = FilterDecider::new(plan(DuplicatePolicy::Ignore));
        assert_eq!(trigger(d.force_trigger(v("a"), 5)).kind, TriggerKind::New);
        assert!(d.is_jailed(&v("a"), 6));
        assert!(d.forget(&Key::from_values(&v("a"))));
        assert!(!d.is_jailed(&v("a"), 6));
    }

    #[test]
    fn weighted_matches_trigger_above_and_fall_back_below() {
        let mut p = plan(DuplicatePolicy::Extend);
        p.retry = 1;
        p.actions.push(action("early-unban", None));
        let score = crate::ScorePlan {
            threshold: 40,
            floor: 0,
            timeout: 3_600_000,
            max_tracked: 100,
        };
        // Regex 0: a failure (+10); regex 1: a success (-5).
        let mut d = FilterDecider::with_score(p, score, vec![10, -5], vec![2]);
        let ip = v("192.0.2.1");
        for n in 0..4 {
            assert_eq!(
                d.on_weighted_match(ip.clone(), 0, n),
                Some(ScoreDecision::Scored {
                    score: (n as i64 + 1) * 10
                })
            );
        }
        let Some(ScoreDecision::Trigger { score: 50, trigger }) =
            d.on_weighted_match(ip.clone(), 0, 4)
        else {
            panic!("the fifth failure triggers");
        };
        // Ban now, unban later; not the fallback action.
        assert_eq!(
            trigger.actions.iter().map(|a| a.action).collect::<Vec<_>>(),
            [0, 1]
        );
        assert!(d.is_jailed(&ip, 5));
        assert_eq!(
            d.on_weighted_match(ip.clone(), 1, 5),
            Some(ScoreDecision::Scored { score: 45 })
        );
        let Some(ScoreDecision::Fallback { score: 40, trigger }) =
            d.on_weighted_match(ip.clone(), 1, 6)
        else {
            panic!("falling to the threshold is a fallback");
        };
        assert_eq!(trigger.actions, [ScheduledAction { action: 2, at: 6 }]);
        assert!(!d.is_jailed(&ip, 7));
        assert_eq!(
            FilterDecider::new(plan(DuplicatePolicy::Extend)).on_weighted_match(ip, 0, 0),
            None
        );
    }

    #[test]
    fn restored_triggers_are_jailed_until_their_last_action() {
        let mut d = FilterDecider::new(plan(DuplicatePolicy::Ignore));
        d.restore_trigger(&Key::from_values(&v("a")), 1_000);
        assert!(d.is_jailed(&v("a"), 3_600_999));
        assert!(!d.is_jailed(&v("a"), 3_601_000));
    }
}
