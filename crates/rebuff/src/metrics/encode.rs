//! The text expositions: Prometheus text 0.0.4 and OpenMetrics 1.0.0.
//!
//! Both write `# HELP`, `# TYPE` and one line per sample; they differ in
//! naming (OpenMetrics names a counter family without its `_total` and an
//! info family without `_info`), in the `info` type, and in the final
//! `# EOF`. Label values escape backslash, double quote and newline, and
//! are otherwise written as the UTF-8 they are.

use std::fmt::Write;

use super::http::Format;

/// A family's type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
    /// Value 1, information in the labels (a gauge in Prometheus text).
    Info,
}

/// Writes one exposition.
#[derive(Debug)]
pub struct Encoder {
    out: String,
    format: Format,
}

/// A label value written escaped.
fn push_escaped(out: &mut String, value: &str) {
    // Nearly every value needs no escape: one byte scan, one copy.
    if !value.bytes().any(|b| matches!(b, b'\\' | b'"' | b'\n')) {
        out.push_str(value);
        return;
    }
    let mut rest = value;
    while let Some(at) = rest.find(['\\', '"', '\n']) {
        out.push_str(&rest[..at]);
        out.push_str(match rest.as_bytes()[at] {
            b'\\' => "\\\\",
            b'"' => "\\\"",
            _ => "\\n",
        });
        rest = &rest[at + 1..];
    }
    out.push_str(rest);
}

/// A float as both formats accept it: `+Inf`, `1.0`, `0.005`.
pub fn push_float(out: &mut String, value: f64) {
    if value.is_infinite() {
        out.push_str(if value > 0.0 { "+Inf" } else { "-Inf" });
    } else if value.is_nan() {
        out.push_str("NaN");
    } else {
        // `{:?}` keeps a `.0` on whole numbers and is shortest-exact.
        let _ = write!(out, "{value:?}");
    }
}

impl Encoder {
    /// `capacity`: a guess of the exposition's size, so a large one is
    /// not copied at every doubling.
    pub fn new(format: Format, capacity: usize) -> Self {
        Encoder {
            out: String::with_capacity(capacity),
            format,
        }
    }

    fn push_value(&mut self, value: u64) {
        self.out.push_str(itoa::Buffer::new().format(value));
        self.out.push('\n');
    }

    /// `name{fixed labels` without the closing brace: written once, then
    /// reused by [`sample_prefixed`](Self::sample_prefixed) for every
    /// series sharing it. `fixed` must not be empty.
    pub fn prefix(name: &str, fixed: &[(&str, &str)]) -> String {
        let mut out = String::with_capacity(64);
        out.push_str(name);
        for (i, (key, value)) in fixed.iter().enumerate() {
            out.push(if i == 0 { '{' } else { ',' });
            out.push_str(key);
            out.push_str("=\"");
            push_escaped(&mut out, value);
            out.push('"');
        }
        out
    }

    /// A sample made of a [`prefix`](Self::prefix) and more labels.
    pub fn sample_prefixed<'a>(
        &mut self,
        prefix: &str,
        extra: impl Iterator<Item = (&'a str, &'a str)>,
        value: u64,
    ) {
        self.out.push_str(prefix);
        for (key, value) in extra {
            self.out.push(',');
            self.out.push_str(key);
            self.out.push_str("=\"");
            push_escaped(&mut self.out, value);
            self.out.push('"');
        }
        self.out.push_str("} ");
        self.push_value(value);
    }

    /// Starts a family. `name` is the Prometheus-text name (with `_total`
    /// for a counter, `_info` for an info family).
    pub fn family(&mut self, name: &str, kind: Kind, help: &str) {
        let (family, type_name) = match (self.format, kind) {
            (Format::OpenMetrics, Kind::Counter) => {
                (name.strip_suffix("_total").unwrap_or(name), "counter")
            }
            (Format::OpenMetrics, Kind::Info) => {
                (name.strip_suffix("_info").unwrap_or(name), "info")
            }
            (_, Kind::Counter) => (name, "counter"),
            (_, Kind::Gauge) | (Format::Prometheus, Kind::Info) => (name, "gauge"),
            (_, Kind::Histogram) => (name, "histogram"),
        };
        self.out.push_str("# HELP ");
        self.out.push_str(family);
        self.out.push(' ');
        // HELP text escapes backslash and newline only.
        self.out
            .push_str(&help.replace('\\', "\\\\").replace('\n', "\\n"));
        self.out.push_str("\n# TYPE ");
        self.out.push_str(family);
        self.out.push(' ');
        self.out.push_str(type_name);
        self.out.push('\n');
    }

    fn start_sample<'a>(
        &mut self,
        name: &str,
        labels: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) {
        self.out.push_str(name);
        let mut labels = labels.into_iter().peekable();
        if labels.peek().is_some() {
            self.out.push('{');
            for (i, (key, value)) in labels.enumerate() {
                if i > 0 {
                    self.out.push(',');
                }
                self.out.push_str(key);
                self.out.push_str("=\"");
                push_escaped(&mut self.out, value);
                self.out.push('"');
            }
            self.out.push('}');
        }
        self.out.push(' ');
    }

    pub fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: u64) {
        self.start_sample(name, labels.iter().copied());
        self.push_value(value);
    }

    /// A sample whose labels are the fixed ones, then `extra`.
    pub fn sample_with<'a>(
        &mut self,
        name: &str,
        fixed: &[(&'a str, &'a str)],
        extra: impl Iterator<Item = (&'a str, &'a str)>,
        value: u64,
    ) {
        self.start_sample(name, fixed.iter().copied().chain(extra));
        self.push_value(value);
    }

    /// Text written elsewhere by an encoder of the same format (families
    /// rendered in parallel with other work), appended as it is.
    pub fn raw(&mut self, text: &str) {
        self.out.push_str(text);
    }

    /// A sample whose value is already formatted (the exporter-compatible
    /// families print counts as Python floats).
    pub fn sample_text(&mut self, name: &str, labels: &[(&str, &str)], value: &str) {
        self.start_sample(name, labels.iter().copied());
        self.out.push_str(value);
        self.out.push('\n');
    }

    pub fn sample_float(&mut self, name: &str, labels: &[(&str, &str)], value: f64) {
        self.start_sample(name, labels.iter().copied());
        push_float(&mut self.out, value);
        self.out.push('\n');
    }

    pub fn finish(mut self) -> Vec<u8> {
        if self.format == Format::OpenMetrics {
            self.out.push_str("# EOF\n");
        }
        self.out.into_bytes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_escape_quotes_backslashes_and_newlines_and_keep_unicode() {
        let mut e = Encoder::new(Format::Prometheus, 0);
        e.family("x_total", Kind::Counter, "Help with \\ and\nnewline.");
        e.sample("x_total", &[("user", "a\"b\\c\nd é 名")], 3);
        let text = String::from_utf8(e.finish()).expect("utf-8");
        assert_eq!(
            text,
            "# HELP x_total Help with \\\\ and\\nnewline.\n# TYPE x_total counter\nx_total{user=\"a\\\"b\\\\c\\nd é 名\"} 3\n"
        );
    }

    #[test]
    fn openmetrics_names_counter_and_info_families_without_suffix_and_ends_with_eof() {
        let mut e = Encoder::new(Format::OpenMetrics, 0);
        e.family("x_total", Kind::Counter, "X.");
        e.sample("x_total", &[], 1);
        e.family("y_info", Kind::Info, "Y.");
        e.sample("y_info", &[("version", "1")], 1);
        e.family("z_seconds", Kind::Histogram, "Z.");
        e.sample_float("z_seconds_bucket", &[("le", "+Inf")], 1.0);
        let text = String::from_utf8(e.finish()).expect("utf-8");
        assert!(text.contains("# TYPE x counter\nx_total 1\n"), "{text}");
        assert!(
            text.contains("# TYPE y info\ny_info{version=\"1\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains("z_seconds_bucket{le=\"+Inf\"} 1.0\n"),
            "{text}"
        );
        assert!(text.ends_with("# EOF\n"));
    }

    #[test]
    fn prometheus_text_serves_info_as_gauge_without_eof() {
        let mut e = Encoder::new(Format::Prometheus, 0);
        e.family("y_info", Kind::Info, "Y.");
        let text = String::from_utf8(e.finish()).expect("utf-8");
        assert_eq!(text, "# HELP y_info Y.\n# TYPE y_info gauge\n");
    }

    #[test]
    fn a_prefixed_sample_equals_the_plain_one() {
        let fixed = [("stream", "s\"1"), ("filter", "f")];
        let mut plain = Encoder::new(Format::Prometheus, 0);
        plain.sample_with("x", &fixed, [("ip", "::1")].into_iter(), 7);
        let mut prefixed = Encoder::new(Format::Prometheus, 0);
        let prefix = Encoder::prefix("x", &fixed);
        prefixed.sample_prefixed(&prefix, [("ip", "::1")].into_iter(), 7);
        assert_eq!(plain.finish(), prefixed.finish());
    }

    #[test]
    fn floats_are_written_as_both_formats_parse_them() {
        let mut out = String::new();
        for v in [0.005, 1.0, 2.5, f64::INFINITY] {
            push_float(&mut out, v);
            out.push(' ');
        }
        assert_eq!(out, "0.005 1.0 2.5 +Inf ");
    }
}
