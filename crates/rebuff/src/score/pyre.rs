//! Python `re` patterns translated to the `regex` crate's syntax, with a
//! clear error for what it cannot express (lookarounds, backreferences,
//! atomic groups, possessive quantifiers, conditionals).
//!
//! Differences handled: `\Z` (end of text), `$` (also before a final
//! newline, as Python's `$` is), octal and `\x`/`\u`/`\U` escapes, escaped
//! punctuation, `[` `&` `~` as literals inside classes, `{` that is no
//! quantifier as a literal, `{,n}`, `(?#...)` comments, verbose mode, the
//! `a`/`u` flags (dropped), global flags only at the start.

/// Translates `pattern`; `ignore_case` is `re.IGNORECASE`.
pub fn translate(pattern: &str, ignore_case: bool) -> Result<String, String> {
    let mut t = Translator {
        chars: pattern.chars().collect(),
        pos: 0,
        out: String::with_capacity(pattern.len() + 16),
        verbose: vec![false],
    };
    if ignore_case {
        t.out.push_str("(?i)");
    }
    t.run()?;
    Ok(t.out)
}

struct Translator {
    chars: Vec<char>,
    pos: usize,
    out: String,
    /// Verbose mode per open group (the last is the current one).
    verbose: Vec<bool>,
}

fn literal(c: char) -> String {
    format!("\\x{{{:X}}}", c as u32)
}

impl Translator {
    fn peek(&self, offset: usize) -> Option<char> {
        self.chars.get(self.pos + offset).copied()
    }

    fn rest_starts_with(&self, s: &str) -> bool {
        s.chars()
            .enumerate()
            .all(|(i, c)| self.chars.get(self.pos + i) == Some(&c))
    }

    fn verbose(&self) -> bool {
        *self.verbose.last().unwrap_or(&false)
    }

    fn run(&mut self) -> Result<(), String> {
        let mut at_start = true;
        while let Some(c) = self.peek(0) {
            if self.verbose() && (crate::score::ini::py_space(c) || c == '#') {
                if c == '#' {
                    while let Some(c) = self.peek(0) {
                        self.pos += 1;
                        if c == '\n' {
                            break;
                        }
                    }
                } else {
                    self.pos += 1;
                }
                continue;
            }
            match c {
                '\\' => {
                    self.pos += 1;
                    let e = self.escape(false)?;
                    self.out.push_str(&e);
                }
                '[' => self.class()?,
                '(' => self.group(at_start)?,
                ')' => {
                    self.pos += 1;
                    if self.verbose.len() > 1 {
                        self.verbose.pop();
                    }
                    self.out.push(')');
                    self.quantifier_suffix()?;
                }
                '{' => {
                    if let Some((text, len)) = self.brace_quantifier() {
                        self.pos += len;
                        self.out.push_str(&text);
                        self.quantifier_suffix()?;
                    } else {
                        self.pos += 1;
                        self.out.push_str("\\{");
                    }
                }
                '}' => {
                    self.pos += 1;
                    self.out.push_str("\\}");
                }
                '*' | '+' | '?' => {
                    self.pos += 1;
                    self.out.push(c);
                    self.quantifier_suffix()?;
                }
                '$' => {
                    self.pos += 1;
                    self.out.push_str("(?m:$)");
                }
                '#' | '&' | '~' | '-' => {
                    self.pos += 1;
                    self.out.push_str(&literal(c));
                }
                c if crate::score::ini::py_space(c) => {
                    self.pos += 1;
                    self.out.push_str(&literal(c));
                }
                c => {
                    self.pos += 1;
                    self.out.push(c);
                }
            }
            at_start = false;
        }
        Ok(())
    }

    /// After a quantifier: `?` (lazy) is kept, `+` (possessive) refused.
    fn quantifier_suffix(&mut self) -> Result<(), String> {
        match self.peek(0) {
            Some('?') if self.quantified() => {
                self.pos += 1;
                self.out.push('?');
            }
            Some('+') if self.quantified() => {
                return Err(format!(
                    "possessive quantifier at position {} is not supported",
                    self.pos
                ));
            }
            _ => {}
        }
        Ok(())
    }

    /// Whether the output just emitted a quantifier.
    fn quantified(&self) -> bool {
        matches!(self.out.chars().last(), Some('*' | '+' | '?' | '}'))
            && !self.out.ends_with("\\}")
            && !self.out.ends_with("\\?")
            && !self.out.ends_with("\\*")
            && !self.out.ends_with("\\+")
    }

    /// `{m}`, `{m,}`, `{m,n}`, `{,n}`, `{,}` at the cursor: the translation
    /// and its length in characters.
    fn brace_quantifier(&self) -> Option<(String, usize)> {
        let mut i = self.pos + 1;
        let mut lo = String::new();
        while let Some(c) = self.chars.get(i).filter(|c| c.is_ascii_digit()) {
            lo.push(*c);
            i += 1;
        }
        match self.chars.get(i) {
            Some('}') if !lo.is_empty() => Some((format!("{{{lo}}}"), i + 1 - self.pos)),
            Some(',') => {
                i += 1;
                let mut hi = String::new();
                while let Some(c) = self.chars.get(i).filter(|c| c.is_ascii_digit()) {
                    hi.push(*c);
                    i += 1;
                }
                if self.chars.get(i) != Some(&'}') {
                    return None;
                }
                let lo = if lo.is_empty() { "0".to_string() } else { lo };
                Some((format!("{{{lo},{hi}}}"), i + 1 - self.pos))
            }
            _ => None,
        }
    }

    fn group(&mut self, at_start: bool) -> Result<(), String> {
        let start = self.pos;
        self.pos += 1;
        let inherited = self.verbose();
        if self.peek(0) != Some('?') {
            self.verbose.push(inherited);
            self.out.push('(');
            return Ok(());
        }
        self.pos += 1;
        let unsupported = |what: &str| Err(format!("{what} at position {start} is not supported"));
        match self.peek(0) {
            Some(':') => {
                self.pos += 1;
                self.verbose.push(inherited);
                self.out.push_str("(?:");
            }
            Some('P') => match self.peek(1) {
                Some('<') => {
                    self.pos += 2;
                    let mut name = String::new();
                    loop {
                        match self.peek(0) {
                            Some('>') => break,
                            Some(c) => name.push(c),
                            None => {
                                return Err(format!(
                                    "missing '>' in the group name at position {start}"
                                ));
                            }
                        }
                        self.pos += 1;
                    }
                    self.pos += 1;
                    let valid = name
                        .chars()
                        .next()
                        .is_some_and(|c| c == '_' || c.is_alphabetic())
                        && name.chars().all(|c| c == '_' || c.is_alphanumeric());
                    if !valid {
                        return Err(format!(
                            "bad character in group name {name:?} at position {start}"
                        ));
                    }
                    self.verbose.push(inherited);
                    self.out.push_str(&format!("(?P<{name}>"));
                }
                Some('=') => return unsupported("a backreference (?P=...)"),
                _ => return Err(format!("unknown extension ?P at position {start}")),
            },
            Some('#') => {
                while let Some(c) = self.peek(0) {
                    self.pos += 1;
                    if c == ')' {
                        return Ok(());
                    }
                }
                return Err(format!(
                    "missing ), unterminated comment at position {start}"
                ));
            }
            Some('=') | Some('!') => return unsupported("a lookahead"),
            Some('<') if matches!(self.peek(1), Some('=') | Some('!')) => {
                return unsupported("a lookbehind");
            }
            Some('>') => return unsupported("an atomic group"),
            Some('(') => return unsupported("a conditional group"),
            _ => {
                // Flags: (?aiLmsux), (?flags:...), (?flags-flags:...).
                let mut on = String::new();
                let mut off = String::new();
                let mut negative = false;
                let mut verbose = inherited;
                loop {
                    let Some(c) = self.peek(0) else {
                        return Err(format!("missing -, : or ) at position {start}"));
                    };
                    self.pos += 1;
                    match c {
                        'i' | 'm' | 's' => {
                            if negative {
                                off.push(c)
                            } else {
                                on.push(c)
                            }
                        }
                        'x' => verbose = !negative,
                        'a' | 'u' => {}
                        'L' => {
                            return Err(format!(
                                "bad inline flags: cannot use 'L' flag with a str pattern at position {start}"
                            ));
                        }
                        '-' if !negative => negative = true,
                        ':' => {
                            let flags = if off.is_empty() {
                                on
                            } else {
                                format!("{on}-{off}")
                            };
                            self.out.push_str(&format!("(?{flags}:"));
                            self.verbose.push(verbose);
                            return Ok(());
                        }
                        ')' if !negative => {
                            if !at_start {
                                return Err(format!(
                                    "global flags not at the start of the expression at position {start}"
                                ));
                            }
                            if !on.is_empty() {
                                self.out.push_str(&format!("(?{on})"));
                            }
                            if let Some(v) = self.verbose.first_mut() {
                                *v = verbose;
                            }
                            return Ok(());
                        }
                        _ => return Err(format!("unknown extension or flag at position {start}")),
                    }
                }
            }
        }
        Ok(())
    }

    /// An escape after the backslash; `in_class` changes `\b` and refuses
    /// assertions.
    fn escape(&mut self, in_class: bool) -> Result<String, String> {
        let at = self.pos - 1;
        let Some(c) = self.peek(0) else {
            return Err("bad escape (end of pattern)".to_string());
        };
        self.pos += 1;
        let hex = |this: &mut Self, n: usize| -> Result<String, String> {
            let digits: String = this.chars[this.pos..].iter().take(n).collect();
            if digits.chars().count() != n || !digits.chars().all(|d| d.is_ascii_hexdigit()) {
                return Err(format!("incomplete escape \\{c} at position {at}"));
            }
            this.pos += n;
            let value = u32::from_str_radix(&digits, 16).map_err(|e| e.to_string())?;
            let ch = char::from_u32(value)
                .ok_or_else(|| format!("bad escape \\{c}{digits} at position {at}"))?;
            Ok(literal(ch))
        };
        Ok(match c {
            'd' | 'D' | 'w' | 'W' | 's' | 'S' => format!("\\{c}"),
            'n' | 't' | 'r' | 'f' | 'v' | 'a' => format!("\\{c}"),
            'b' if in_class => literal('\u{8}'),
            'b' | 'B' | 'A' if !in_class => format!("\\{c}"),
            'Z' if !in_class => "\\z".to_string(),
            'x' => hex(self, 2)?,
            'u' => hex(self, 4)?,
            'U' => hex(self, 8)?,
            '0'..='7'
                if c == '0'
                    || (self.peek(0).is_some_and(|d| ('0'..='7').contains(&d))
                        && self.peek(1).is_some_and(|d| ('0'..='7').contains(&d))) =>
            {
                let mut value = c.to_digit(8).unwrap_or(0);
                for _ in 0..2 {
                    match self.peek(0).and_then(|d| d.to_digit(8)) {
                        Some(d) => {
                            value = value * 8 + d;
                            self.pos += 1;
                        }
                        None => break,
                    }
                }
                if value > 0o377 {
                    return Err(format!(
                        "octal escape value outside of range 0-0o377 at position {at}"
                    ));
                }
                literal(char::from_u32(value).unwrap_or('\0'))
            }
            '1'..='9' => {
                return Err(format!(
                    "a backreference \\{c} at position {at} is not supported"
                ));
            }
            c if c.is_ascii_alphanumeric() => {
                return Err(format!("bad escape \\{c} at position {at}"));
            }
            c => literal(c),
        })
    }

    fn class(&mut self) -> Result<(), String> {
        let start = self.pos;
        self.pos += 1;
        self.out.push('[');
        if self.peek(0) == Some('^') {
            self.pos += 1;
            self.out.push('^');
        }
        if self.peek(0) == Some(']') {
            self.pos += 1;
            self.out.push_str("\\]");
        }
        loop {
            let Some(c) = self.peek(0) else {
                return Err(format!("unterminated character set at position {start}"));
            };
            self.pos += 1;
            match c {
                ']' => {
                    self.out.push(']');
                    return Ok(());
                }
                '\\' => {
                    let e = self.escape(true)?;
                    self.out.push_str(&e);
                }
                '-' => {
                    // A range operator between two members, else a literal.
                    let prev_is_member = !self.out.ends_with('[') && !self.out.ends_with("[^");
                    if prev_is_member
                        && self.peek(0).is_some_and(|n| n != ']')
                        && !self.rest_starts_with("-")
                    {
                        self.out.push('-');
                    } else {
                        self.out.push_str(&literal('-'));
                    }
                }
                '[' | '&' | '~' | '^' => self.out.push_str(&literal(c)),
                c if c.is_whitespace() => self.out.push_str(&literal(c)),
                c => self.out.push(c),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn is_match(pattern: &str, text: &str) -> bool {
        let translated = translate(pattern, false).expect("translates");
        regex::Regex::new(&translated)
            .unwrap_or_else(|e| panic!("{pattern} -> {translated}: {e}"))
            .is_match(text)
    }

    #[test]
    fn python_specifics() {
        assert!(is_match(r"foo$", "foo\n"));
        assert!(!is_match(r"foo\Z", "foo\n"));
        assert!(is_match(r"foo\Z", "foo"));
        assert!(is_match(r"a{", "a{"));
        assert!(is_match(r"x{,2}y", "xxy"));
        assert!(is_match(r"[[:a]+$", "[:a"));
        assert!(is_match(r"[]a]", "]"));
        assert!(is_match(r"[a&&b]", "&"));
        assert!(is_match(r"\101\0", "A\0"));
        assert!(is_match(r"\x41\u0042", "AB"));
        assert!(is_match(r"a(?#comment)b", "ab"));
        assert!(is_match(r"(?x) a b # comment", "ab"));
        assert!(is_match(r"(?i)ABC", "abc"));
        assert!(is_match(r"\<\>", "<>"));
        assert!(is_match(r"[\b]", "\u{8}"));
        assert!(is_match(r"[a-]", "-"));
        assert!(is_match(r"(?P<address>\d+) (?:x)*?", "12 "));
        assert!(is_match(r"a # b", "a # b"));
    }

    #[test]
    fn unsupported_constructs_are_errors() {
        for p in [
            r"(?=a)",
            r"(?!a)",
            r"(?<=a)",
            r"(?<!a)",
            r"(a)\1",
            r"(?P<x>a)(?P=x)",
            r"(?>a)",
            r"a*+",
            r"(?(1)a|b)",
            r"a(?i)b",
            r"\e",
            r"\p{L}",
            r"[a",
            r"\x4",
        ] {
            assert!(translate(p, false).is_err(), "{p}");
        }
    }
}
