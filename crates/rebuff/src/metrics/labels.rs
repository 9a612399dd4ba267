//! Pattern labels: how a match's values become label values.
//!
//! Each filter has one [`LabelRule`] per pattern (from `metrics.all` and
//! `metrics.for`, resolved at load). A raw value is used as is, a dropped
//! one produces no label, and a template is rendered with minijinja (with
//! Python-style string methods, as the exporter's Jinja2 templates use
//! them) under a fuel limit, so a pathological template cannot stall a
//! stream. A template that fails at render time drops that label for that
//! match and is counted; the match itself is always counted.

use std::sync::atomic::{AtomicU64, Ordering};

use minijinja::Environment;

use crate::config::{LabelRule, MetricsConfig};

/// Instructions a template may spend on one value: far more than any
/// sensible label transformation needs, and still microseconds.
const TEMPLATE_FUEL: u64 = 10_000;

/// The environment label templates compile and render in.
pub(crate) fn environment() -> Environment<'static> {
    let mut env = Environment::new();
    minijinja_contrib::add_to_environment(&mut env);
    env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
    env.set_fuel(Some(TEMPLATE_FUEL));
    env
}

/// Checks that `source` compiles (for config validation).
pub fn compile_check(pattern: &str, source: &str) -> Result<(), String> {
    let mut env = environment();
    env.add_template_owned(pattern.to_owned(), source.to_owned())
        .map_err(|e| e.to_string())
}

/// The compiled label rules of every filter.
#[derive(Debug)]
pub struct LabelRules {
    env: Environment<'static>,
    /// By global filter index, then value slot.
    filters: Vec<Vec<Slot>>,
    /// Render failures by global filter index, then value slot.
    errors: Vec<Vec<AtomicU64>>,
}

#[derive(Debug)]
enum Slot {
    Raw,
    Drop,
    /// The template's name in the environment.
    Template {
        name: String,
        pattern: String,
    },
}

impl LabelRules {
    /// Compiles the rules of `config`; `pattern_names` gives each filter's
    /// pattern names by global index.
    pub fn new(config: &MetricsConfig, pattern_names: &[Vec<String>]) -> Self {
        let mut env = environment();
        let mut filters = Vec::new();
        for (fid, rules) in config.labels.iter().enumerate() {
            let mut slots = Vec::new();
            for (slot, rule) in rules.iter().enumerate() {
                let pattern = pattern_names
                    .get(fid)
                    .and_then(|names| names.get(slot))
                    .cloned()
                    .unwrap_or_default();
                slots.push(match rule {
                    LabelRule::Raw => Slot::Raw,
                    LabelRule::Drop => Slot::Drop,
                    LabelRule::Template(source) => {
                        let name = format!("{fid}.{slot}");
                        // Compiled at load already; a failure here would be
                        // a bug, and the label is then dropped.
                        match env.add_template_owned(name.clone(), source.clone()) {
                            Ok(()) => Slot::Template { name, pattern },
                            Err(_) => Slot::Drop,
                        }
                    }
                });
            }
            filters.push(slots);
        }
        let errors = filters
            .iter()
            .map(|slots| slots.iter().map(|_| AtomicU64::new(0)).collect())
            .collect();
        LabelRules {
            env,
            filters,
            errors,
        }
    }

    /// True when every label of `fid` is the raw value (nothing to render).
    pub fn is_raw(&self, fid: usize) -> bool {
        self.filters
            .get(fid)
            .is_none_or(|slots| slots.iter().all(|s| matches!(s, Slot::Raw)))
    }

    /// The label values of a match of `fid`, in slot order; `None` for a
    /// dropped label (or a template that failed).
    pub fn render(&self, fid: usize, values: &[String], out: &mut Vec<Option<String>>) {
        out.clear();
        let Some(slots) = self.filters.get(fid) else {
            return;
        };
        for (slot, (rule, value)) in slots.iter().zip(values).enumerate() {
            out.push(match rule {
                Slot::Raw => Some(value.clone()),
                Slot::Drop => None,
                Slot::Template { name, pattern } => {
                    let rendered = self.env.get_template(name).and_then(|t| {
                        t.render(std::collections::BTreeMap::from([(
                            pattern.clone(),
                            value.clone(),
                        )]))
                    });
                    match rendered {
                        Ok(text) => Some(text),
                        Err(e) => {
                            let count = self.errors[fid][slot].fetch_add(1, Ordering::Relaxed) + 1;
                            if count <= 10 || count.is_multiple_of(10_000) {
                                tracing::warn!(
                                    pattern = %pattern,
                                    count,
                                    error = %e,
                                    "a label template failed; the label is left out"
                                );
                            }
                            None
                        }
                    }
                }
            });
        }
    }

    /// Render failures of (filter, slot).
    pub fn errors(&self, fid: usize, slot: usize) -> u64 {
        self.errors
            .get(fid)
            .and_then(|slots| slots.get(slot))
            .map_or(0, |c| c.load(Ordering::Relaxed))
    }

    /// Whether `fid`'s value `slot` can produce a label at all.
    pub fn is_template(&self, fid: usize, slot: usize) -> bool {
        matches!(
            self.filters.get(fid).and_then(|s| s.get(slot)),
            Some(Slot::Template { .. })
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{FamilySwitch, MetricsExport};

    fn rules(labels: Vec<Vec<LabelRule>>) -> LabelRules {
        let config = MetricsConfig {
            listen: "127.0.0.1:9411".parse().expect("address"),
            web_config: None,
            max_series: 10,
            series_idle_ms: 1000,
            labels,
            export: MetricsExport {
                matches: FamilySwitch::On { extra: true },
                actions: FamilySwitch::On { extra: true },
                pending: FamilySwitch::On { extra: true },
                commands: true,
                streams: true,
                internals: true,
                pattern_matches: FamilySwitch::Off,
            },
        };
        LabelRules::new(&config, &[vec!["ip".into(), "email".into()]])
    }

    fn values(a: &str, b: &str) -> Vec<String> {
        vec![a.to_owned(), b.to_owned()]
    }

    #[test]
    fn a_python_style_template_keeps_the_domain_of_an_email() {
        let rules = rules(vec![vec![
            LabelRule::Raw,
            LabelRule::Template("{{ email.split('@') | last }}".into()),
        ]]);
        let mut out = Vec::new();
        rules.render(0, &values("1.2.3.4", "bob@example.org"), &mut out);
        assert_eq!(
            out,
            vec![Some("1.2.3.4".to_owned()), Some("example.org".to_owned())]
        );
        assert!(!rules.is_raw(0));
    }

    #[test]
    fn a_dropped_label_has_no_value() {
        let rules = rules(vec![vec![LabelRule::Drop, LabelRule::Raw]]);
        let mut out = Vec::new();
        rules.render(0, &values("1.2.3.4", "x"), &mut out);
        assert_eq!(out, vec![None, Some("x".to_owned())]);
    }

    #[test]
    fn a_template_failing_at_render_time_drops_the_label_and_is_counted() {
        // Division by zero only fails when rendered.
        let rules = rules(vec![vec![
            LabelRule::Template("{{ 1 // (ip | length - ip | length) }}".into()),
            LabelRule::Raw,
        ]]);
        let mut out = Vec::new();
        rules.render(0, &values("1.2.3.4", "x"), &mut out);
        assert_eq!(out, vec![None, Some("x".to_owned())]);
        rules.render(0, &values("1.2.3.5", "x"), &mut out);
        assert_eq!(rules.errors(0, 0), 2);
    }

    #[test]
    fn a_runaway_template_runs_out_of_fuel() {
        let rules = rules(vec![vec![
            LabelRule::Template("{% for i in range(100000) %}{{ i }}{% endfor %}".into()),
            LabelRule::Raw,
        ]]);
        let mut out = Vec::new();
        rules.render(0, &values("1.2.3.4", "x"), &mut out);
        assert_eq!(out[0], None);
        assert_eq!(rules.errors(0, 0), 1);
    }

    #[test]
    fn a_syntax_error_is_reported_at_compile_time() {
        assert!(compile_check("ip", "{{ ip ").is_err());
        assert!(compile_check("ip", "{{ ip.split('.')[0] }}").is_ok());
    }
}
