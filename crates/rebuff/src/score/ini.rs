//! INI files as Python's `configparser.ConfigParser()` with its defaults
//! reads them: `=` and `:` delimiters, `#`/`;` full-line comments only,
//! indented continuation lines, empty lines inside values, lower-cased keys,
//! case-sensitive section names, `[DEFAULT]` inherited by every section,
//! strict duplicates, and basic `%(name)s` / `%%` interpolation on `get`.

use std::collections::HashMap;
use std::fmt;

/// Python's `str.isspace()`.
pub fn py_space(c: char) -> bool {
    matches!(
        c,
        '\t' | '\n'
            | '\x0b'
            | '\x0c'
            | '\r'
            | '\x1c'..='\x1f'
            | ' '
            | '\u{85}'
            | '\u{a0}'
            | '\u{1680}'
            | '\u{2000}'..='\u{200a}'
            | '\u{2028}'
            | '\u{2029}'
            | '\u{202f}'
            | '\u{205f}'
            | '\u{3000}'
    )
}

/// Python's `str.strip()`.
pub fn py_strip(s: &str) -> &str {
    s.trim_matches(py_space)
}

/// Python's `str.splitlines()`.
pub fn py_splitlines(s: &str) -> Vec<&str> {
    let mut lines = Vec::new();
    let mut start = 0;
    let mut chars = s.char_indices().peekable();
    while let Some((i, c)) = chars.next() {
        let end = match c {
            '\r' => {
                if let Some(&(_, '\n')) = chars.peek() {
                    chars.next();
                    i + 2
                } else {
                    i + 1
                }
            }
            '\n' | '\x0b' | '\x0c' | '\x1c' | '\x1d' | '\x1e' | '\u{85}' | '\u{2028}'
            | '\u{2029}' => i + c.len_utf8(),
            _ => continue,
        };
        lines.push(&s[start..i]);
        start = end;
    }
    if start < s.len() {
        lines.push(&s[start..]);
    }
    lines
}

/// Lines as Python's universal newlines split a text file: `\n`, `\r\n`
/// and `\r` end a line.
fn universal_lines(text: &str) -> Vec<&str> {
    let mut lines = Vec::new();
    let bytes = text.as_bytes();
    let mut start = 0;
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'\n' => {
                lines.push(&text[start..i]);
                start = i + 1;
            }
            b'\r' => {
                lines.push(&text[start..i]);
                if bytes.get(i + 1) == Some(&b'\n') {
                    i += 1;
                }
                start = i + 1;
            }
            _ => {}
        }
        i += 1;
    }
    if start < bytes.len() {
        lines.push(&text[start..]);
    }
    lines
}

/// What went wrong, with the line (1-based) when there is one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IniError {
    pub line: Option<usize>,
    pub message: String,
}

impl fmt::Display for IniError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(line) => write!(f, "line {line}: {}", self.message),
            None => f.write_str(&self.message),
        }
    }
}

fn error(line: usize, message: String) -> IniError {
    IniError {
        line: Some(line),
        message,
    }
}

#[derive(Debug, Clone, Default)]
struct Options {
    /// Key, value lines (joined at the end), line of the key.
    entries: Vec<(String, Vec<String>, usize)>,
    index: HashMap<String, usize>,
}

impl Options {
    fn set(&mut self, key: String, value: String, line: usize) {
        match self.index.get(&key) {
            Some(&i) => self.entries[i] = (key, vec![value], line),
            None => {
                self.index.insert(key.clone(), self.entries.len());
                self.entries.push((key, vec![value], line));
            }
        }
    }

    fn get(&self, key: &str) -> Option<(&str, usize)> {
        self.index.get(key).map(|&i| {
            let (_, v, line) = &self.entries[i];
            (v[0].as_str(), *line)
        })
    }
}

/// A parsed file.
#[derive(Debug, Clone, Default)]
pub struct Ini {
    defaults: Options,
    sections: Vec<(String, Options)>,
    section_index: HashMap<String, usize>,
}

const DEFAULT_SECTION: &str = "DEFAULT";
const MAX_INTERPOLATION_DEPTH: usize = 10;

enum Cursor {
    None,
    Defaults,
    Section(usize),
}

impl Ini {
    /// Parses `text` as `ConfigParser.read_file` does.
    pub fn parse(text: &str) -> Result<Ini, IniError> {
        let mut ini = Ini::default();
        let mut added_sections: Vec<String> = Vec::new();
        let mut added_options: std::collections::HashSet<(String, String)> = Default::default();
        let mut cursor = Cursor::None;
        let mut sectname = String::new();
        let mut optname: Option<String> = None;
        let mut indent_level = 0usize;
        let mut bad_lines: Vec<(usize, String)> = Vec::new();
        for (n, raw) in universal_lines(text).into_iter().enumerate() {
            let lineno = n + 1;
            let stripped = py_strip(raw);
            let comment = stripped.starts_with('#') || stripped.starts_with(';');
            let value = if comment { "" } else { stripped };
            if value.is_empty() {
                if !comment
                    && let Some(name) = optname.as_deref().filter(|n| !n.is_empty())
                    && let Some(options) = ini.options_mut(&cursor)
                    && let Some(&i) = options.index.get(name)
                {
                    options.entries[i].1.push(String::new());
                }
                continue;
            }
            let cur_indent = raw.chars().take_while(|&c| py_space(c)).count();
            let continuation = optname.as_deref().is_some_and(|n| !n.is_empty())
                && !matches!(cursor, Cursor::None)
                && cur_indent > indent_level;
            if continuation {
                let name = optname.clone().unwrap_or_default();
                if let Some(options) = ini.options_mut(&cursor)
                    && let Some(&i) = options.index.get(&name)
                {
                    options.entries[i].1.push(value.to_string());
                }
                continue;
            }
            indent_level = cur_indent;
            if let Some(header) = section_header(value) {
                sectname = header.to_string();
                if let Some(&i) = ini.section_index.get(header) {
                    if added_sections.iter().any(|s| s == header) {
                        return Err(error(lineno, format!("section '{header}' already exists")));
                    }
                    added_sections.push(header.to_string());
                    cursor = Cursor::Section(i);
                } else if header == DEFAULT_SECTION {
                    cursor = Cursor::Defaults;
                } else {
                    ini.section_index
                        .insert(header.to_string(), ini.sections.len());
                    ini.sections.push((header.to_string(), Options::default()));
                    added_sections.push(header.to_string());
                    cursor = Cursor::Section(ini.sections.len() - 1);
                }
                optname = None;
                continue;
            }
            if matches!(cursor, Cursor::None) {
                return Err(error(
                    lineno,
                    format!("file contains no section headers: {raw:?}"),
                ));
            }
            match value.find(['=', ':']) {
                Some(at) => {
                    let name = value[..at].trim_end_matches(py_space);
                    if name.is_empty() {
                        bad_lines.push((lineno, raw.to_string()));
                    }
                    let name = name.to_lowercase();
                    let val = py_strip(&value[at + 1..]).to_string();
                    let key = (sectname.clone(), name.clone());
                    if added_options.contains(&key) {
                        return Err(error(
                            lineno,
                            format!("option '{name}' in section '{sectname}' already exists"),
                        ));
                    }
                    added_options.insert(key);
                    if let Some(options) = ini.options_mut(&cursor) {
                        options.set(name.clone(), val, lineno);
                    }
                    optname = Some(name);
                }
                None => bad_lines.push((lineno, raw.to_string())),
            }
        }
        // Join multi-line values, dropping trailing empty lines.
        for options in
            std::iter::once(&mut ini.defaults).chain(ini.sections.iter_mut().map(|(_, o)| o))
        {
            for entry in &mut options.entries {
                let joined = entry.1.join("\n");
                let joined = joined.trim_end_matches(py_space).to_string();
                entry.1 = vec![joined];
            }
        }
        if let Some((line, text)) = bad_lines.first() {
            let mut message = format!("cannot parse {text:?}");
            if bad_lines.len() > 1 {
                let others: Vec<String> = bad_lines[1..]
                    .iter()
                    .map(|(l, t)| format!("line {l}: {t:?}"))
                    .collect();
                message.push_str(&format!(" (and {})", others.join(", ")));
            }
            return Err(error(*line, message));
        }
        Ok(ini)
    }

    fn options_mut(&mut self, cursor: &Cursor) -> Option<&mut Options> {
        match *cursor {
            Cursor::None => None,
            Cursor::Defaults => Some(&mut self.defaults),
            Cursor::Section(i) => Some(&mut self.sections[i].1),
        }
    }

    /// Section names in file order, `DEFAULT` excluded.
    pub fn sections(&self) -> impl Iterator<Item = &str> {
        self.sections.iter().map(|(name, _)| name.as_str())
    }

    fn raw(&self, section: &str, key: &str) -> Option<(&str, usize)> {
        let options = &self.sections[*self.section_index.get(section)?].1;
        options.get(key).or_else(|| self.defaults.get(key))
    }

    /// `parser.get(section, key, fallback=None)`: the interpolated value, or
    /// `None` when neither the section nor `DEFAULT` has the key.
    pub fn get(&self, section: &str, key: &str) -> Result<Option<(String, usize)>, IniError> {
        let key = key.to_lowercase();
        let Some((raw, line)) = self.raw(section, &key) else {
            return Ok(None);
        };
        let mut out = String::new();
        self.interpolate(section, &key, raw, line, 1, &mut out)?;
        Ok(Some((out, line)))
    }

    fn interpolate(
        &self,
        section: &str,
        key: &str,
        mut rest: &str,
        line: usize,
        depth: usize,
        out: &mut String,
    ) -> Result<(), IniError> {
        if depth > MAX_INTERPOLATION_DEPTH {
            return Err(error(
                line,
                format!(
                    "[{section}] {key}: recursion limit exceeded in value substitution ({MAX_INTERPOLATION_DEPTH} levels)"
                ),
            ));
        }
        while !rest.is_empty() {
            let Some(p) = rest.find('%') else {
                out.push_str(rest);
                return Ok(());
            };
            out.push_str(&rest[..p]);
            rest = &rest[p..];
            let next = rest[1..].chars().next();
            match next {
                Some('%') => {
                    out.push('%');
                    rest = &rest[2..];
                }
                Some('(') => {
                    let close = rest[2..].find(')').map(|i| i + 2);
                    let name = match close {
                        Some(c) if c > 2 && rest[c + 1..].starts_with('s') => &rest[2..c],
                        _ => {
                            return Err(error(
                                line,
                                format!(
                                    "[{section}] {key}: bad interpolation variable reference {rest:?}"
                                ),
                            ));
                        }
                    };
                    let var = name.to_lowercase();
                    rest = &rest[close.unwrap_or(0) + 2..];
                    let Some((value, _)) = self.raw(section, &var) else {
                        return Err(error(
                            line,
                            format!(
                                "[{section}] {key}: bad interpolation, no option '{var}' for %({name})s"
                            ),
                        ));
                    };
                    if value.contains('%') {
                        self.interpolate(section, key, value, line, depth + 1, out)?;
                    } else {
                        out.push_str(value);
                    }
                }
                _ => {
                    return Err(error(
                        line,
                        format!(
                            "[{section}] {key}: '%' must be followed by '%' or '(', found: {rest:?}"
                        ),
                    ));
                }
            }
        }
        Ok(())
    }
}

/// `\[(?P<header>.+)\]` matched at the start of the stripped line.
fn section_header(value: &str) -> Option<&str> {
    let rest = value.strip_prefix('[')?;
    let end = rest.rfind(']')?;
    (end > 0).then(|| &rest[..end])
}

/// `getboolean`.
pub fn parse_bool(value: &str) -> Option<bool> {
    match value.to_lowercase().as_str() {
        "1" | "yes" | "true" | "on" => Some(true),
        "0" | "no" | "false" | "off" => Some(false),
        _ => None,
    }
}

/// Python's `int(str)` for decimal text: surrounding whitespace, a sign,
/// digits with single underscores between them. Saturates beyond `i64`.
pub fn parse_int(value: &str) -> Option<i64> {
    let s = py_strip(value);
    let (negative, digits) = match s.as_bytes().first() {
        Some(b'-') => (true, &s[1..]),
        Some(b'+') => (false, &s[1..]),
        _ => (false, s),
    };
    if digits.is_empty()
        || digits.starts_with('_')
        || digits.ends_with('_')
        || digits.contains("__")
        || !digits.bytes().all(|b| b.is_ascii_digit() || b == b'_')
    {
        return None;
    }
    let mut n: i128 = 0;
    for b in digits.bytes().filter(|&b| b != b'_') {
        n = (n * 10 + i128::from(b - b'0')).min(i128::from(i64::MAX) + 1);
    }
    let n = if negative { -n } else { n };
    Some(n.clamp(i128::from(i64::MIN), i128::from(i64::MAX)) as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn get(ini: &Ini, s: &str, k: &str) -> Option<String> {
        ini.get(s, k).expect("interpolates").map(|(v, _)| v)
    }

    #[test]
    fn delimiters_comments_case_and_defaults() {
        let ini = Ini::parse(
            "# comment\n[DEFAULT]\nScore = 5\nbase: abc\n\n[a]\nmatch = x=y ; not a comment\nKey:v\n; c\n[b]\nscore=7\n",
        )
        .expect("parses");
        assert_eq!(ini.sections().collect::<Vec<_>>(), ["a", "b"]);
        assert_eq!(
            get(&ini, "a", "match").as_deref(),
            Some("x=y ; not a comment")
        );
        assert_eq!(get(&ini, "a", "key").as_deref(), Some("v"));
        assert_eq!(get(&ini, "a", "score").as_deref(), Some("5"));
        assert_eq!(get(&ini, "b", "score").as_deref(), Some("7"));
        assert_eq!(get(&ini, "b", "BASE").as_deref(), Some("abc"));
        assert_eq!(get(&ini, "b", "missing"), None);
    }

    #[test]
    fn continuation_lines_and_empty_lines_in_values() {
        let ini =
            Ini::parse("[a]\ndefaults = x=1\n  y=2\n\n   z=3\n\n\nnext = 1\n").expect("parses");
        assert_eq!(
            get(&ini, "a", "defaults").as_deref(),
            Some("x=1\ny=2\n\nz=3")
        );
        assert_eq!(get(&ini, "a", "next").as_deref(), Some("1"));
    }

    #[test]
    fn interpolation() {
        let ini = Ini::parse(
            "[DEFAULT]\nip = (?P<address>[0-9.]+)\n[a]\nmatch = from %(IP)s 100%%\nbad = %(nope)s\nloop = %(loop)s\nlone = 5%\n",
        )
        .expect("parses");
        assert_eq!(
            get(&ini, "a", "match").as_deref(),
            Some("from (?P<address>[0-9.]+) 100%")
        );
        assert!(ini.get("a", "bad").is_err());
        assert!(ini.get("a", "loop").is_err());
        assert!(ini.get("a", "lone").is_err());
    }

    fn error_line(text: &str) -> Option<usize> {
        Ini::parse(text).err().and_then(|e| e.line)
    }

    #[test]
    fn errors() {
        assert_eq!(error_line("x = 1\n"), Some(1));
        assert_eq!(error_line("[a]\n[a]\n"), Some(2));
        assert_eq!(error_line("[a]\nx=1\nX=2\n"), Some(3));
        assert_eq!(error_line("[a]\nno delimiter\n"), Some(2));
        assert_eq!(error_line("[a]\n= v\n"), Some(2));
        // `[]` is no header; `[a]]` names `a]`.
        assert!(Ini::parse("[]\n").is_err());
        let ini = Ini::parse("[a]]\r\nk=v\rj=w").expect("parses");
        assert_eq!(get(&ini, "a]", "j").as_deref(), Some("w"));
    }

    #[test]
    fn ints_and_bools() {
        assert_eq!(parse_int(" -1_000 "), Some(-1000));
        assert_eq!(parse_int("+7"), Some(7));
        for bad in ["", "1__0", "_1", "1.0", "0x10", "- 1"] {
            assert_eq!(parse_int(bad), None, "{bad:?}");
        }
        assert_eq!(parse_int("99999999999999999999999"), Some(i64::MAX));
        assert_eq!(parse_bool("On"), Some(true));
        assert_eq!(parse_bool("0"), Some(false));
        assert_eq!(parse_bool("y"), None);
        assert_eq!(py_splitlines("a\x0bb\r\nc\n"), ["a", "b", "c"]);
    }
}
