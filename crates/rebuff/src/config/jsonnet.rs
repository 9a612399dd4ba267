//! JSONnet configuration files: evaluation -> positioned [`Node`] tree.
//!
//! [`eval_jsonnet`] evaluates a JSONnet file with `rsjsonnet-lang` and turns
//! the resulting value into a [`Node`] tree, or returns a [`ParseError`] that
//! points at the offending file, line and column. It owns three policies:
//!
//! * **Confined imports.** `import`, `importstr` and `importbin` resolve
//!   relative to the importing file and must land inside the configuration
//!   directory: absolute paths, `..` that climbs out, and symbolic links
//!   leading outside are refused with an error at the import. Hidden names
//!   (`.lib.jsonnet`, `_lib.jsonnet`) are ordinary files here. No search path
//!   exists; nothing outside the directory is ever read.
//! * **Quiet, bounded evaluation.** Nothing is printed: errors come back as
//!   values, `std.trace` output is dropped, no native functions or external
//!   variables exist. The evaluator's call depth is capped (`MAX_STACK`);
//!   the evaluator keeps its stack on the heap, so the cap stops runaway
//!   recursion rather than protecting the native stack. Memory and time are
//!   bounded by evaluating in a child process under resource limits
//!   (`jsonnet/child.rs`), and the converted tree by the load's [`Budget`].
//! * **Recovered positions.** Evaluated JSONnet values do not remember where
//!   they were written, so positions are recovered from the main file's
//!   source, best effort, and never point into another file:
//!   every node and key gets at least the main file ([`Loc::file_only`]).
//!   The main file is scanned once, skipping comments and strings, for
//!   literal field definitions inside `{ }`: a name or quoted string followed
//!   by `:`, `::`, `:::` or a `+` form of those (`name:`, `'name':`,
//!   `"name"+:`...). Each definition remembers which field's value it sits in
//!   (the enclosing object's field, looking through `[ ]` and `( )`). A key of
//!   the evaluated value then takes the position of a definition with its name
//!   and the same parent definition as its own parent key; top-level keys use
//!   definitions that are in no field, the least nested ones. When several
//!   match, the last one wins (it is the one `+` keeps), except inside arrays,
//!   where element *n* takes the first match after element *n - 1*'s keys. A
//!   key with no match (computed names, fields from imports, objects returned
//!   by functions) stays file-only, and so do all keys beneath it. A value
//!   takes its key's position; array elements take their array's.
//!
//! Numbers that are integral and fit an `i64` become [`Value::Int`], other
//! numbers [`Value::Float`]. Object keys come in JSONnet's order (sorted), and
//! hidden fields are left out, as in JSONnet's own output.

use std::collections::HashMap;
use std::path::{Component, Path, PathBuf};
use std::sync::{Arc, OnceLock};

use rsjsonnet_lang::arena::Arena;
use rsjsonnet_lang::ast::{BinaryOp, UnaryOp};
use rsjsonnet_lang::interner::InternedStr;
use rsjsonnet_lang::lexer::LexError;
use rsjsonnet_lang::parser::{ActualToken, ExpectedToken, ParseError as SyntaxError};
use rsjsonnet_lang::program::{
    AnalyzeError, Callbacks, EvalError, EvalErrorKind, EvalErrorValueType, EvalStackTraceItem,
    ImportError, LoadError, NativeError, Program, Thunk, Value as JValue, ValueKind,
};
use rsjsonnet_lang::span::{SourceId, SpanContext, SpanId};
use rsjsonnet_lang::token::STokenKind;

use super::tree::{Key, Loc, Node, ParseError, Value, shared_path};
use super::{Budget, NODE_COST};

mod child;

/// Deepest JSONnet call stack allowed, the value other JSONnet
/// implementations use by default.
const MAX_STACK: usize = 500;

/// Deepest nesting of arrays and objects accepted in the result, as for the
/// other formats: the tree is walked recursively later on.
const MAX_DEPTH: usize = 512;

/// Evaluates the JSONnet file `path` into a positioned tree; imports may only
/// read files inside the directory `root`. The evaluation and the tree are
/// counted against `budget`.
///
/// In the binary ([`use_child_process`] was called) the evaluation runs in a
/// child process under memory, CPU and wall-clock limits; otherwise (the
/// library's own tests) it runs here, bounded only by the tree budget.
pub fn eval_jsonnet(path: &Path, root: &Path, budget: &mut Budget) -> Result<Node, ParseError> {
    match EVALUATOR.get() {
        Some(program) => child::evaluate(program, path, root, budget),
        None => eval_here(path, root, budget),
    }
}

/// The program run as the evaluator child (the rebuff binary itself).
static EVALUATOR: OnceLock<PathBuf> = OnceLock::new();

/// Makes every later JSONnet evaluation run in a child process: `program`
/// started with [`CHILD_ARG`] must call [`child_main`]. The rebuff binary
/// passes itself, as `/proc/self/exe` where that exists, so a binary
/// replaced on disk by an upgrade still starts as the same version.
pub fn use_child_process(program: PathBuf) {
    let _ = EVALUATOR.set(program);
}

/// The hidden first argument that makes the rebuff binary a JSONnet
/// evaluator child: `rebuff CHILD_ARG FILE ROOT TREE_BYTES CPU_SECONDS`.
pub const CHILD_ARG: &str = "__rebuff-eval-jsonnet";

pub use child::child_main;

/// Evaluates in this process (see [`eval_jsonnet`]).
fn eval_here(path: &Path, root: &Path, budget: &mut Budget) -> Result<Node, ParseError> {
    let file = shared_path(path);
    let in_file = |message: String| ParseError::new(Loc::file_only(file.clone()), message);
    let root = root.canonicalize().map_err(|err| {
        in_file(format!(
            "cannot resolve the configuration directory {}: {err}",
            root.display()
        ))
    })?;
    let data = budget.read(path)?;
    let canonical = path
        .canonicalize()
        .map_err(|err| in_file(format!("cannot resolve the file's path: {err}")))?;
    let text = Text::new(data);
    let keys = KeyIndex::new(&text);

    let arena = Arena::new();
    let mut program = Program::new(&arena);
    program.set_max_stack(MAX_STACK);
    let mut loader = Loader {
        main: file.clone(),
        root,
        sources: HashMap::new(),
        cache: HashMap::new(),
        failure: None,
    };
    let thunk = loader.load(&mut program, file.clone(), canonical.clone(), text)?;
    loader.cache.insert(canonical, thunk.clone());
    let value = program
        .eval_value(&thunk, &mut loader)
        .map_err(|err| loader.eval_error(&program, err))?;

    let mut converter = Converter {
        file,
        keys: &keys,
        budget,
    };
    let place = Place {
        parent: Parent::Root,
        after: None,
        in_array: false,
        loc: Loc::file_only(converter.file.clone()),
    };
    let (node, _) = converter.convert(&value, place, 0, &mut Vec::new())?;
    Ok(node)
}

/// A source file's bytes, with where each line starts.
struct Text {
    data: Vec<u8>,
    line_starts: Vec<usize>,
}

impl Text {
    fn new(data: Vec<u8>) -> Self {
        let mut line_starts = vec![0];
        line_starts.extend(
            data.iter()
                .enumerate()
                .filter(|&(_, &b)| b == b'\n')
                .map(|(i, _)| i + 1),
        );
        Text { data, line_starts }
    }

    /// 1-based line and character column of a byte offset.
    fn position(&self, offset: usize) -> (u32, u32) {
        let offset = offset.min(self.data.len());
        let line = self.line_starts.partition_point(|&start| start <= offset);
        let start = self.line_starts[line.saturating_sub(1)];
        // Continuation bytes do not start a character.
        let col = self.data[start..offset]
            .iter()
            .filter(|&&b| b & 0xC0 != 0x80)
            .count()
            + 1;
        (
            u32::try_from(line).unwrap_or(u32::MAX),
            u32::try_from(col).unwrap_or(u32::MAX),
        )
    }
}

/// A loaded JSONnet source, to turn spans into positions.
struct SourceFile {
    /// The path shown in messages: the main file as given, imports joined to
    /// their importer's shown directory.
    display: Arc<Path>,
    /// The real path, which imports are resolved against.
    canonical: PathBuf,
    text: Text,
}

/// The evaluator's view of the file system and of our error reporting.
struct Loader<'p> {
    main: Arc<Path>,
    root: PathBuf,
    sources: HashMap<SourceId, SourceFile>,
    cache: HashMap<PathBuf, Thunk<'p>>,
    /// Why the last import failed: the evaluator only learns "it failed", so
    /// the real reason waits here until its error comes back.
    failure: Option<ParseError>,
}

impl<'p> Loader<'p> {
    fn load(
        &mut self,
        program: &mut Program<'p>,
        display: Arc<Path>,
        canonical: PathBuf,
        text: Text,
    ) -> Result<Thunk<'p>, ParseError> {
        let (context, id) = program
            .span_manager_mut()
            .insert_source_context(text.data.len());
        let this_file = display.to_string_lossy().into_owned();
        let loaded = program.load_source(context, &text.data, true, &this_file);
        self.sources.insert(
            id,
            SourceFile {
                display: display.clone(),
                canonical,
                text,
            },
        );
        loaded.map_err(|err| {
            let (span, message) = load_error_message(&err, |span| self.span_loc(program, span));
            let loc = self
                .span_loc(program, span)
                .unwrap_or_else(|| Loc::file_only(display));
            ParseError::new(loc, message)
        })
    }

    fn span_loc(&self, program: &Program<'p>, span: SpanId) -> Option<Loc> {
        let (file, offset) = self.span_source(program, span)?;
        let (line, col) = file.text.position(offset);
        Some(Loc::new(file.display.clone(), line, col))
    }

    fn span_source(&self, program: &Program<'p>, span: SpanId) -> Option<(&SourceFile, usize)> {
        let spans = program.span_manager();
        let (context, start, _) = spans.get_span(span);
        let SpanContext::Source(id) = *spans.get_context(context);
        // The standard library is a source too, but not one of ours.
        self.sources.get(&id).map(|file| (file, start))
    }

    /// Finds the file an import names, or says why it may not be read.
    fn resolve(
        &self,
        program: &Program<'p>,
        from: SpanId,
        requested: &str,
    ) -> Result<(PathBuf, Arc<Path>), ParseError> {
        let Some((importer, offset)) = self.span_source(program, from) else {
            // Only the standard library is not ours, and it imports nothing.
            return Err(ParseError::new(
                Loc::file_only(self.main.clone()),
                format!("cannot import {requested:?} from outside the configuration"),
            ));
        };
        let (line, col) = importer.text.position(offset);
        let at = Loc::new(importer.display.clone(), line, col);
        let refuse = |why: String| {
            ParseError::new(at.clone(), format!("cannot import {requested:?}: {why}"))
        };
        let outside = || {
            refuse(format!(
                "it is outside the configuration directory {}",
                self.root.display()
            ))
        };
        let wanted = Path::new(requested);
        if requested.is_empty() {
            return Err(refuse("the path is empty".to_owned()));
        }
        if wanted.has_root() || wanted.is_absolute() {
            return Err(refuse(format!(
                "absolute paths are not allowed, imports are relative to the importing file \
                 and stay inside the configuration directory {}",
                self.root.display()
            )));
        }
        let base = importer.canonical.parent().unwrap_or(&self.root);
        let joined = base.join(wanted);
        let canonical = match joined.canonicalize() {
            Ok(canonical) => canonical,
            Err(_) if !normalize(&joined).starts_with(&self.root) => return Err(outside()),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
                return Err(refuse(format!("there is no file {}", joined.display())));
            }
            Err(err) => return Err(refuse(format!("{}: {err}", joined.display()))),
        };
        if !canonical.starts_with(&self.root) {
            return Err(outside());
        }
        if !canonical.is_file() {
            return Err(refuse(format!("{} is not a file", canonical.display())));
        }
        let shown_dir = importer.display.parent().unwrap_or(Path::new(""));
        Ok((canonical, shared_path(&normalize(&shown_dir.join(wanted)))))
    }

    fn read(
        &mut self,
        program: &Program<'p>,
        from: SpanId,
        requested: &str,
    ) -> Result<(PathBuf, Arc<Path>, Vec<u8>), ImportError> {
        let resolved = self
            .resolve(program, from, requested)
            .and_then(|(canonical, display)| match std::fs::read(&canonical) {
                Ok(data) => Ok((canonical, display, data)),
                Err(err) => Err(ParseError::new(
                    Loc::file_only(display),
                    format!("cannot read the imported file: {err}"),
                )),
            });
        resolved.map_err(|err| self.fail(err))
    }

    fn fail(&mut self, err: ParseError) -> ImportError {
        self.failure = Some(err);
        ImportError
    }

    fn eval_error(&mut self, program: &Program<'p>, err: EvalError) -> ParseError {
        if matches!(err.kind, EvalErrorKind::ImportFailed { .. })
            && let Some(failure) = self.failure.take()
        {
            return failure;
        }
        let (span, mut message) = eval_error_message(&err.kind);
        let path = value_path(&err.stack_trace);
        if !path.is_empty() {
            message.push_str(&format!(" (in the value of {path})"));
        }
        let primary = span.and_then(|span| self.span_loc(program, span));
        let context = err.stack_trace.iter().rev().find_map(|item| {
            let (what, span) = trace_item(item);
            let loc = self.span_loc(program, span?)?;
            (primary.as_ref() != Some(&loc)).then_some((what, loc))
        });
        match (primary, context) {
            (Some(loc), Some((what, at))) => {
                ParseError::new(loc, format!("{message}; while evaluating {what} at {at}"))
            }
            (Some(loc), None) => ParseError::new(loc, message),
            (None, Some((what, at))) => {
                ParseError::new(at, format!("{message}; while evaluating {what}"))
            }
            (None, None) => ParseError::new(Loc::file_only(self.main.clone()), message),
        }
    }
}

impl<'p> Callbacks<'p> for Loader<'p> {
    fn import(
        &mut self,
        program: &mut Program<'p>,
        from: SpanId,
        path: &str,
    ) -> Result<Thunk<'p>, ImportError> {
        let (canonical, display, data) = self.read(program, from, path)?;
        if let Some(thunk) = self.cache.get(&canonical) {
            return Ok(thunk.clone());
        }
        match self.load(program, display, canonical.clone(), Text::new(data)) {
            Ok(thunk) => {
                self.cache.insert(canonical, thunk.clone());
                Ok(thunk)
            }
            Err(err) => Err(self.fail(err)),
        }
    }

    fn import_str(
        &mut self,
        program: &mut Program<'p>,
        from: SpanId,
        path: &str,
    ) -> Result<String, ImportError> {
        let (_, display, data) = self.read(program, from, path)?;
        String::from_utf8(data).map_err(|_| {
            self.fail(ParseError::new(
                Loc::file_only(display),
                "importstr needs a UTF-8 text file; use importbin for binary data",
            ))
        })
    }

    fn import_bin(
        &mut self,
        program: &mut Program<'p>,
        from: SpanId,
        path: &str,
    ) -> Result<Vec<u8>, ImportError> {
        self.read(program, from, path).map(|(_, _, data)| data)
    }

    fn trace(&mut self, _: &mut Program<'p>, _: &str, _: &[EvalStackTraceItem]) {
        // A daemon's configuration loader has no terminal to trace to.
    }

    fn native_call(
        &mut self,
        _: &mut Program<'p>,
        _: InternedStr<'p>,
        _: &[JValue<'p>],
    ) -> Result<JValue<'p>, NativeError> {
        // None are registered, so the evaluator never gets here.
        Err(NativeError)
    }
}

/// `a/./b/../c` -> `a/c`, without touching the file system.
fn normalize(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for component in path.components() {
        match component {
            Component::CurDir => {}
            Component::ParentDir => {
                if matches!(out.components().next_back(), Some(Component::Normal(_))) {
                    out.pop();
                } else if !out.has_root() {
                    out.push("..");
                }
            }
            other => out.push(other),
        }
    }
    out
}

// ---------------------------------------------------------------------------
// Error messages.

fn load_error_message(err: &LoadError, loc: impl Fn(SpanId) -> Option<Loc>) -> (SpanId, String) {
    match err {
        LoadError::Lex(err) => lex_error_message(err),
        LoadError::Parse(SyntaxError::Expected {
            span,
            expected,
            instead,
        }) => {
            let expected: Vec<String> = expected.iter().map(expected_token).collect();
            let expected = match expected.as_slice() {
                [] => "something else".to_owned(),
                [one] => one.clone(),
                [init @ .., last] => format!("{} or {last}", init.join(", ")),
            };
            (
                *span,
                format!("expected {expected}, found {}", actual_token(instead)),
            )
        }
        LoadError::Analyze(err) => analyze_error_message(err, loc),
    }
}

fn lex_error_message(err: &LexError) -> (SpanId, String) {
    match err {
        LexError::InvalidChar { span, chr } => (*span, format!("unexpected character {chr:?}")),
        LexError::InvalidUtf8 { span, seq } => {
            (*span, format!("invalid UTF-8 byte sequence {seq:02X?}"))
        }
        LexError::UnfinishedMultilineComment { span } => {
            (*span, "this /* comment is never closed by */".to_owned())
        }
        LexError::LeadingZeroInNumber { span } => {
            (*span, "numbers cannot have leading zeros".to_owned())
        }
        LexError::MissingFracDigits { span } => {
            (*span, "expected a digit after the decimal point".to_owned())
        }
        LexError::MissingExpDigits { span } => {
            (*span, "expected a digit in the exponent".to_owned())
        }
        LexError::MissingDigitAfterUnderscore { span } => {
            (*span, "expected a digit after '_' in a number".to_owned())
        }
        LexError::ExpOverflow { span } => {
            (*span, "the exponent of this number is too large".to_owned())
        }
        LexError::InvalidEscapeInString { span, chr } => (
            *span,
            format!("invalid escape sequence \\{chr} in a string"),
        ),
        LexError::IncompleteUnicodeEscape { span } => {
            (*span, "expected 4 hexadecimal digits after \\u".to_owned())
        }
        LexError::InvalidUtf16EscapeSequence { span, cu1, cu2 } => {
            let second = cu2.map(|cu2| format!("\\u{cu2:04X}")).unwrap_or_default();
            (
                *span,
                format!("\\u{cu1:04X}{second} is not a valid character (unpaired surrogate?)"),
            )
        }
        LexError::UnfinishedString { span } => (*span, "this string is never closed".to_owned()),
        LexError::MissingLineBreakAfterTextBlockStart { span } => {
            (*span, "expected a line break after |||".to_owned())
        }
        LexError::MissingWhitespaceTextBlockStart { span } => (
            *span,
            "the first line of a ||| text block must be indented".to_owned(),
        ),
        LexError::InvalidTextBlockTermination { span } => (
            *span,
            "a ||| text block must end with ||| on its own line".to_owned(),
        ),
    }
}

fn analyze_error_message(
    err: &AnalyzeError,
    loc: impl Fn(SpanId) -> Option<Loc>,
) -> (SpanId, String) {
    let first = |span: &SpanId| {
        loc(*span)
            .map(|loc| format!(" (first at line {})", loc.line))
            .unwrap_or_default()
    };
    match err {
        AnalyzeError::UnknownVariable { span, name } => {
            (*span, format!("unknown variable `{name}`"))
        }
        AnalyzeError::SelfOutsideObject { self_span } => {
            (*self_span, "`self` is used outside of an object".to_owned())
        }
        AnalyzeError::SuperOutsideObject { super_span } => (
            *super_span,
            "`super` is used outside of an object".to_owned(),
        ),
        AnalyzeError::DollarOutsideObject { dollar_span } => {
            (*dollar_span, "`$` is used outside of an object".to_owned())
        }
        AnalyzeError::RepeatedLocalName {
            original_span,
            repeated_span,
            name,
        } => (
            *repeated_span,
            format!(
                "`{name}` is defined twice in the same `local`{}",
                first(original_span)
            ),
        ),
        AnalyzeError::RepeatedFieldName {
            original_span,
            repeated_span,
            name,
        } => (
            *repeated_span,
            format!(
                "the field {name:?} is defined twice in this object{}",
                first(original_span)
            ),
        ),
        AnalyzeError::RepeatedParamName {
            original_span,
            repeated_span,
            name,
        } => (
            *repeated_span,
            format!(
                "the parameter `{name}` is declared twice{}",
                first(original_span)
            ),
        ),
        AnalyzeError::PositionalArgAfterNamed { arg_span } => (
            *arg_span,
            "a positional argument cannot follow a named one".to_owned(),
        ),
        AnalyzeError::TextBlockAsImportPath { span } => (
            *span,
            "an import path cannot be a ||| text block".to_owned(),
        ),
        AnalyzeError::ComputedImportPath { span } => (
            *span,
            "an import path must be a plain string literal".to_owned(),
        ),
    }
}

fn expected_token(token: &ExpectedToken) -> String {
    match token {
        ExpectedToken::EndOfFile => "the end of the file".to_owned(),
        ExpectedToken::Simple(kind) => format!("'{}'", symbol(*kind)),
        ExpectedToken::Ident => "a name".to_owned(),
        ExpectedToken::Number => "a number".to_owned(),
        ExpectedToken::String => "a string".to_owned(),
        ExpectedToken::TextBlock => "a text block".to_owned(),
        ExpectedToken::Expr => "an expression".to_owned(),
        ExpectedToken::BinaryOp => "an operator".to_owned(),
    }
}

fn actual_token(token: &ActualToken) -> String {
    match token {
        ActualToken::EndOfFile => "the end of the file".to_owned(),
        ActualToken::Simple(kind) => format!("'{}'", symbol(*kind)),
        ActualToken::OtherOp(op) => format!("'{op}'"),
        ActualToken::Ident(name) => format!("the name `{name}`"),
        ActualToken::Number => "a number".to_owned(),
        ActualToken::String => "a string".to_owned(),
        ActualToken::TextBlock => "a text block".to_owned(),
    }
}

fn symbol(kind: STokenKind) -> &'static str {
    match kind {
        STokenKind::Assert => "assert",
        STokenKind::Else => "else",
        STokenKind::Error => "error",
        STokenKind::False => "false",
        STokenKind::For => "for",
        STokenKind::Function => "function",
        STokenKind::If => "if",
        STokenKind::Import => "import",
        STokenKind::Importstr => "importstr",
        STokenKind::Importbin => "importbin",
        STokenKind::In => "in",
        STokenKind::Local => "local",
        STokenKind::Null => "null",
        STokenKind::Tailstrict => "tailstrict",
        STokenKind::Then => "then",
        STokenKind::Self_ => "self",
        STokenKind::Super => "super",
        STokenKind::True => "true",
        STokenKind::Exclam => "!",
        STokenKind::ExclamEq => "!=",
        STokenKind::Dollar => "$",
        STokenKind::Percent => "%",
        STokenKind::Amp => "&",
        STokenKind::AmpAmp => "&&",
        STokenKind::LeftParen => "(",
        STokenKind::RightParen => ")",
        STokenKind::Asterisk => "*",
        STokenKind::Plus => "+",
        STokenKind::PlusColon => "+:",
        STokenKind::PlusColonColon => "+::",
        STokenKind::PlusColonColonColon => "+:::",
        STokenKind::Comma => ",",
        STokenKind::Minus => "-",
        STokenKind::Dot => ".",
        STokenKind::Slash => "/",
        STokenKind::Colon => ":",
        STokenKind::ColonColon => "::",
        STokenKind::ColonColonColon => ":::",
        STokenKind::Semicolon => ";",
        STokenKind::Lt => "<",
        STokenKind::LtLt => "<<",
        STokenKind::LtEq => "<=",
        STokenKind::Eq => "=",
        STokenKind::EqEq => "==",
        STokenKind::Gt => ">",
        STokenKind::GtEq => ">=",
        STokenKind::GtGt => ">>",
        STokenKind::LeftBracket => "[",
        STokenKind::RightBracket => "]",
        STokenKind::Hat => "^",
        STokenKind::LeftBrace => "{",
        STokenKind::Pipe => "|",
        STokenKind::PipePipe => "||",
        STokenKind::RightBrace => "}",
        STokenKind::Tilde => "~",
    }
}

fn type_name(t: EvalErrorValueType) -> &'static str {
    match t {
        EvalErrorValueType::Null => "null",
        EvalErrorValueType::Bool => "a boolean",
        EvalErrorValueType::Number => "a number",
        EvalErrorValueType::String => "a string",
        EvalErrorValueType::Array => "an array",
        EvalErrorValueType::Object => "an object",
        EvalErrorValueType::Function => "a function",
    }
}

fn unary_symbol(op: UnaryOp) -> &'static str {
    match op {
        UnaryOp::Minus => "-",
        UnaryOp::Plus => "+",
        UnaryOp::BitwiseNot => "~",
        UnaryOp::LogicNot => "!",
    }
}

fn binary_symbol(op: BinaryOp) -> &'static str {
    match op {
        BinaryOp::Add => "+",
        BinaryOp::Sub => "-",
        BinaryOp::Mul => "*",
        BinaryOp::Div => "/",
        BinaryOp::Rem => "%",
        BinaryOp::Shl => "<<",
        BinaryOp::Shr => ">>",
        BinaryOp::Lt => "<",
        BinaryOp::Le => "<=",
        BinaryOp::Gt => ">",
        BinaryOp::Ge => ">=",
        BinaryOp::Eq => "==",
        BinaryOp::Ne => "!=",
        BinaryOp::In => "in",
        BinaryOp::BitwiseAnd => "&",
        BinaryOp::BitwiseOr => "|",
        BinaryOp::BitwiseXor => "^",
        BinaryOp::LogicAnd => "&&",
        BinaryOp::LogicOr => "||",
    }
}

/// The text of an evaluation error and the span it is about, if any.
fn eval_error_message(kind: &EvalErrorKind) -> (Option<SpanId>, String) {
    use EvalErrorKind as K;
    match kind {
        K::StackOverflow => (
            None,
            format!("evaluation nested deeper than {MAX_STACK} calls (runaway recursion?)"),
        ),
        K::InfiniteRecursion => (None, "a value is defined in terms of itself".to_owned()),
        K::InvalidIndexedType { span, got_type } => (
            Some(*span),
            format!("cannot index {}", type_name(*got_type)),
        ),
        K::InvalidSlicedType { span, got_type } => (
            Some(*span),
            format!("cannot slice {}", type_name(*got_type)),
        ),
        K::SliceIndexOrStepIsNotNumber { span, got_type } => (
            Some(*span),
            format!(
                "slice bounds and step must be numbers, not {}",
                type_name(*got_type)
            ),
        ),
        K::StringIndexIsNotNumber { span, got_type } => (
            Some(*span),
            format!(
                "a string is indexed by a number, not {}",
                type_name(*got_type)
            ),
        ),
        K::ArrayIndexIsNotNumber { span, got_type } => (
            Some(*span),
            format!(
                "an array is indexed by a number, not {}",
                type_name(*got_type)
            ),
        ),
        K::NumericIndexIsNotValid { span, index } => {
            (Some(*span), format!("{index} is not a valid index"))
        }
        K::NumericIndexOutOfRange {
            span,
            index,
            length,
        } => (
            Some(*span),
            format!("index {index} is out of range (the length is {length})"),
        ),
        K::ObjectIndexIsNotString { span, got_type } => (
            Some(*span),
            format!(
                "an object is indexed by a string, not {}",
                type_name(*got_type)
            ),
        ),
        K::RepeatedFieldName { span, name } => (
            Some(*span),
            format!("the field {name:?} is defined twice in this object"),
        ),
        K::FieldNameIsNotString { span, got_type } => (
            Some(*span),
            format!(
                "a field name must be a string, not {}",
                type_name(*got_type)
            ),
        ),
        K::UnknownObjectField { span, field_name } => (
            Some(*span),
            format!("the object has no field {field_name:?}"),
        ),
        K::FieldOfNonObject { span } => (
            Some(*span),
            "cannot take a field of something that is not an object".to_owned(),
        ),
        K::SuperWithoutSuperObject { span } => (
            Some(*span),
            "`super` is used in an object that does not extend another".to_owned(),
        ),
        K::ForSpecValueIsNotArray { span, got_type } => (
            Some(*span),
            format!("`for` iterates over an array, not {}", type_name(*got_type)),
        ),
        K::CondIsNotBool { span, got_type } => (
            Some(*span),
            format!(
                "a condition must be a boolean, not {}",
                type_name(*got_type)
            ),
        ),
        K::CalleeIsNotFunction { span, got_type } => {
            (*span, format!("cannot call {}", type_name(*got_type)))
        }
        K::TooManyCallArgs { span, num_params } => (
            *span,
            format!("too many arguments: the function takes {num_params}"),
        ),
        K::UnknownCallParam { span, param_name } => (
            *span,
            format!("the function has no parameter `{param_name}`"),
        ),
        K::RepeatedCallParam { span, param_name } => {
            (*span, format!("the argument `{param_name}` is given twice"))
        }
        K::CallParamNotBound { span, param_name } => (
            *span,
            format!("no value is given for the parameter `{param_name}`"),
        ),
        K::NativeCallFailed => (None, "a native function failed".to_owned()),
        K::InvalidUnaryOpType { span, op, rhs_type } => (
            Some(*span),
            format!(
                "the operator '{}' does not apply to {}",
                unary_symbol(*op),
                type_name(*rhs_type)
            ),
        ),
        K::InvalidBinaryOpTypes {
            span,
            op,
            lhs_type,
            rhs_type,
        } => (
            *span,
            format!(
                "the operator '{}' does not apply to {} and {}",
                binary_symbol(*op),
                type_name(*lhs_type),
                type_name(*rhs_type)
            ),
        ),
        K::NumberNotBitwiseSafe { span } => (
            *span,
            "the number is too large for a bitwise operation".to_owned(),
        ),
        K::NumberOverflow { span } => (*span, "the number is too large".to_owned()),
        K::NumberNan { span } => (*span, "the result is not a number (NaN)".to_owned()),
        K::DivByZero { span } => (*span, "division by zero".to_owned()),
        K::ShiftByNegative { span } => (*span, "shift by a negative amount".to_owned()),
        K::InvalidStdFuncArgType {
            func_name,
            arg_index,
            expected_types,
            got_type,
        } => {
            let expected: Vec<&str> = expected_types.iter().map(|t| type_name(*t)).collect();
            let expected = match expected.as_slice() {
                [init @ .., last] if !init.is_empty() => format!("{} or {last}", init.join(", ")),
                _ => expected.join(""),
            };
            (
                None,
                format!(
                    "argument {} of std.{func_name} must be {expected}, not {}",
                    arg_index + 1,
                    type_name(*got_type)
                ),
            )
        }
        K::AssertFailed { span, message } => (
            Some(*span),
            match message {
                Some(message) => format!("assertion failed: {message}"),
                None => "assertion failed".to_owned(),
            },
        ),
        K::AssertEqualFailed { lhs, rhs } => {
            (None, format!("std.assertEqual failed: {lhs} != {rhs}"))
        }
        K::ExplicitError { span, message } => (Some(*span), format!("error: {message}")),
        K::ImportFailed { span, path } => (Some(*span), format!("cannot import {path:?}")),
        K::UnknownExtVar { name } => (
            None,
            format!("there is no external variable {name:?} (rebuff defines none)"),
        ),
        K::ManifestFunction => (
            None,
            "a function cannot be a configuration value".to_owned(),
        ),
        K::CompareNullInequality => (None, "null cannot be ordered with <, >".to_owned()),
        K::CompareBooleanInequality => (None, "booleans cannot be ordered with <, >".to_owned()),
        K::CompareObjectInequality => (None, "objects cannot be ordered with <, >".to_owned()),
        K::CompareFunctions => (None, "functions cannot be compared".to_owned()),
        K::CompareDifferentTypesInequality { lhs_type, rhs_type } => (
            None,
            format!(
                "cannot order {} against {}",
                type_name(*lhs_type),
                type_name(*rhs_type)
            ),
        ),
        K::PrimitiveEqualsNonPrimitive { got_type } => (
            None,
            format!(
                "std.primitiveEquals cannot compare {}",
                type_name(*got_type)
            ),
        ),
        K::Other { span, message } => (*span, message.clone()),
    }
}

/// What a stack-trace entry was doing, and where.
fn trace_item(item: &EvalStackTraceItem) -> (String, Option<SpanId>) {
    match item {
        EvalStackTraceItem::Expr { span } => ("an expression".to_owned(), Some(*span)),
        EvalStackTraceItem::Call { span, name } => (
            match name {
                Some(name) => format!("a call to `{name}`"),
                None => "a function call".to_owned(),
            },
            *span,
        ),
        EvalStackTraceItem::Variable { span, name } => {
            (format!("the variable `{name}`"), Some(*span))
        }
        EvalStackTraceItem::ArrayItem { span, index } => (format!("array item {index}"), *span),
        EvalStackTraceItem::ObjectField { span, name } => (format!("the field {name:?}"), *span),
        EvalStackTraceItem::Import { span } => ("an import".to_owned(), Some(*span)),
        EvalStackTraceItem::CompareArrayItem { .. }
        | EvalStackTraceItem::CompareObjectField { .. }
        | EvalStackTraceItem::ManifestArrayItem { .. }
        | EvalStackTraceItem::ManifestObjectField { .. } => (String::new(), None),
    }
}

/// The key path of the result being produced when an error struck, from the
/// span-less entries the evaluator pushes while walking the final value.
fn value_path(trace: &[EvalStackTraceItem]) -> String {
    let mut path = String::new();
    for item in trace {
        match item {
            EvalStackTraceItem::ObjectField { span: None, name }
            | EvalStackTraceItem::ManifestObjectField { name } => {
                if !path.is_empty() {
                    path.push('.');
                }
                path.push_str(name);
            }
            EvalStackTraceItem::ArrayItem { span: None, index }
            | EvalStackTraceItem::ManifestArrayItem { index } => {
                path.push_str(&format!("[{index}]"));
            }
            _ => {}
        }
    }
    shorten(path)
}

/// Keeps a runaway path readable: its start and its end.
fn shorten(path: String) -> String {
    const KEEP: usize = 80;
    let chars = path.chars().count();
    if chars <= 2 * KEEP {
        return path;
    }
    let head: String = path.chars().take(KEEP).collect();
    let tail: String = path.chars().skip(chars - KEEP).collect();
    format!("{head}…{tail}")
}

// ---------------------------------------------------------------------------
// Position recovery (see the module documentation).

/// A literal field definition found in the main file.
struct Definition {
    offset: usize,
    line: u32,
    col: u32,
    /// How many `{` enclose it.
    depth: usize,
    owner: Owner,
}

/// The field whose value an object literal is written in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Owner {
    /// None: the object is the file's value, a local's, an argument...
    Free,
    /// The definition with this index.
    Field(usize),
    /// A field whose name is not literal (`[name]: ...`).
    Opaque,
}

struct Bracket {
    kind: u8,
    /// For `{`: whose value this object is.
    owner: Owner,
    /// For `{`: the field of this object being written, if any.
    field: Owner,
}

struct KeyIndex {
    definitions: Vec<Definition>,
    by_name: HashMap<String, Vec<usize>>,
}

impl KeyIndex {
    fn new(text: &Text) -> Self {
        let src = text.data.as_slice();
        let mut index = KeyIndex {
            definitions: Vec::new(),
            by_name: HashMap::new(),
        };
        let mut stack: Vec<Bracket> = Vec::new();
        // The last byte of the previous token, to skip `x.name` accesses,
        // and whether that token was `assert`, whose `cond : message` looks
        // like a field.
        let mut prev = 0u8;
        let mut after_assert = false;
        let mut i = 0;
        while i < src.len() {
            let b = src[i];
            let next = src.get(i + 1).copied();
            let start = i;
            let mut name = None;
            match b {
                b' ' | b'\t' | b'\r' | b'\n' => {
                    i += 1;
                    continue;
                }
                b'#' => {
                    i = find(src, i, b"\n").unwrap_or(src.len());
                    continue;
                }
                b'/' if next == Some(b'/') => {
                    i = find(src, i, b"\n").unwrap_or(src.len());
                    continue;
                }
                b'/' if next == Some(b'*') => {
                    i = find(src, i + 2, b"*/").map_or(src.len(), |end| end + 2);
                    continue;
                }
                b'"' | b'\'' => {
                    let (end, text) = quoted(src, i);
                    i = end;
                    name = Some(text);
                }
                b'@' if matches!(next, Some(b'"' | b'\'')) => {
                    let (end, text) = verbatim(src, i + 1);
                    i = end;
                    name = Some(text);
                }
                b'|' if src[i..].starts_with(b"|||") => {
                    i = find(src, i + 3, b"|||").map_or(src.len(), |end| end + 3);
                }
                b'_' | b'a'..=b'z' | b'A'..=b'Z' => {
                    let len = src[i..]
                        .iter()
                        .take_while(|c| c.is_ascii_alphanumeric() || **c == b'_')
                        .count();
                    let word = &src[i..i + len];
                    i += len;
                    if prev != b'.' && !after_assert {
                        name = Some(String::from_utf8_lossy(word).into_owned());
                    }
                }
                b'{' => {
                    let owner = stack
                        .iter()
                        .rev()
                        .find(|bracket| bracket.kind == b'{')
                        .map_or(Owner::Free, |bracket| bracket.field);
                    stack.push(Bracket {
                        kind: b'{',
                        owner,
                        field: Owner::Free,
                    });
                    i += 1;
                }
                b'[' | b'(' => {
                    stack.push(Bracket {
                        kind: b,
                        owner: Owner::Free,
                        field: Owner::Free,
                    });
                    i += 1;
                }
                b'}' | b']' | b')' => {
                    stack.pop();
                    i += 1;
                }
                b',' | b':' => {
                    if let Some(top) = stack.last_mut().filter(|top| top.kind == b'{') {
                        // A ',' ends the field; a ':' not taken by a literal
                        // name below starts a field with a computed name.
                        top.field = if b == b',' {
                            Owner::Free
                        } else {
                            Owner::Opaque
                        };
                    }
                    i += 1;
                }
                _ => i += 1,
            }
            after_assert = &src[start..i] == b"assert";
            prev = src[i - 1];
            if let Some(name) = name {
                i = index.definition(text, &mut stack, start, i, name);
            }
        }
        index
    }

    /// Records `name` (the token `start..end`) if a field colon follows it
    /// directly inside an object; returns where scanning resumes.
    fn definition(
        &mut self,
        text: &Text,
        stack: &mut [Bracket],
        start: usize,
        end: usize,
        name: String,
    ) -> usize {
        let src = text.data.as_slice();
        let depth = stack.iter().filter(|bracket| bracket.kind == b'{').count();
        let Some(top) = stack.last_mut().filter(|top| top.kind == b'{') else {
            return end;
        };
        let mut j = end;
        while matches!(src.get(j), Some(b' ' | b'\t' | b'\r' | b'\n')) {
            j += 1;
        }
        if src.get(j) == Some(&b'+') {
            j += 1;
        }
        let colons = src[j.min(src.len())..]
            .iter()
            .take(3)
            .take_while(|&&c| c == b':')
            .count();
        if colons == 0 {
            return end;
        }
        let (line, col) = text.position(start);
        let id = self.definitions.len();
        self.definitions.push(Definition {
            offset: start,
            line,
            col,
            depth,
            owner: top.owner,
        });
        self.by_name.entry(name).or_default().push(id);
        top.field = Owner::Field(id);
        j + colons
    }

    /// The definition a key of the evaluated value most likely came from.
    fn find(
        &self,
        name: &str,
        parent: Parent,
        after: Option<usize>,
        in_array: bool,
    ) -> Option<usize> {
        let ids = self.by_name.get(name)?;
        let owner = match parent {
            Parent::Root => Owner::Free,
            Parent::Field(id) => Owner::Field(id),
            Parent::Unknown => return None,
        };
        let min_depth = match parent {
            Parent::Root => ids
                .iter()
                .filter(|&&id| self.definitions[id].owner == Owner::Free)
                .map(|&id| self.definitions[id].depth)
                .min()?,
            _ => 0,
        };
        let mut matching = ids.iter().copied().filter(|&id| {
            let definition = &self.definitions[id];
            definition.owner == owner
                && (parent != Parent::Root || definition.depth == min_depth)
                && after.is_none_or(|after| definition.offset > after)
        });
        if in_array {
            matching.next()
        } else {
            matching.next_back()
        }
    }
}

/// The offset of `needle` in `src` at or after `from`.
fn find(src: &[u8], from: usize, needle: &[u8]) -> Option<usize> {
    src.get(from..)?
        .windows(needle.len())
        .position(|window| window == needle)
        .map(|at| from + at)
}

/// Reads a `"..."` or `'...'` string starting at `start`; returns the offset
/// after it and its (simply) unescaped text.
fn quoted(src: &[u8], start: usize) -> (usize, String) {
    let quote = src[start];
    let mut j = start + 1;
    while j < src.len() && src[j] != quote {
        j += if src[j] == b'\\' { 2 } else { 1 };
    }
    let raw = String::from_utf8_lossy(&src[start + 1..j.min(src.len())]).into_owned();
    ((j + 1).min(src.len()), unescape(&raw).unwrap_or(raw))
}

/// Reads a `@"..."` or `@'...'` string whose quote is at `start`.
fn verbatim(src: &[u8], start: usize) -> (usize, String) {
    let quote = src[start];
    let mut j = start + 1;
    while j < src.len() {
        if src[j] == quote {
            if src.get(j + 1) == Some(&quote) {
                j += 2;
                continue;
            }
            break;
        }
        j += 1;
    }
    let raw = String::from_utf8_lossy(&src[start + 1..j.min(src.len())]).into_owned();
    let doubled = String::from_utf8_lossy(&[quote, quote]).into_owned();
    let single = String::from_utf8_lossy(&[quote]).into_owned();
    ((j + 1).min(src.len()), raw.replace(&doubled, &single))
}

/// JSONnet string escapes, enough to match field names; `None` when the
/// text uses one this does not know (the name then simply is not found).
fn unescape(raw: &str) -> Option<String> {
    if !raw.contains('\\') {
        return Some(raw.to_owned());
    }
    let mut out = String::with_capacity(raw.len());
    let mut chars = raw.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        out.push(match chars.next()? {
            'n' => '\n',
            't' => '\t',
            'r' => '\r',
            'b' => '\u{8}',
            'f' => '\u{c}',
            'u' => {
                let hex: String = chars.by_ref().take(4).collect();
                char::from_u32(u32::from_str_radix(&hex, 16).ok()?)?
            }
            other @ ('"' | '\'' | '\\' | '/') => other,
            _ => return None,
        });
    }
    Some(out)
}

// ---------------------------------------------------------------------------
// Value -> Node.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Parent {
    /// Keys of the top-level object.
    Root,
    /// Keys of the value of this definition.
    Field(usize),
    /// Keys beneath a key whose definition was not found.
    Unknown,
}

/// Where a value sits, for position recovery.
struct Place {
    parent: Parent,
    /// Inside an array: the last key offset used by the previous elements.
    after: Option<usize>,
    in_array: bool,
    loc: Loc,
}

struct Converter<'a, 'b> {
    file: Arc<Path>,
    keys: &'a KeyIndex,
    budget: &'b mut Budget,
}

impl Converter<'_, '_> {
    /// Converts one value; also returns the largest source offset of the
    /// definitions its keys were matched to, so the next array element
    /// searches after it.
    fn convert(
        &mut self,
        value: &JValue<'_>,
        place: Place,
        depth: usize,
        path: &mut Vec<String>,
    ) -> Result<(Node, Option<usize>), ParseError> {
        if depth > MAX_DEPTH {
            return Err(too_deep(place.loc));
        }
        if let Err(message) = self.budget.spend(NODE_COST, false) {
            return Err(ParseError::new(place.loc, message));
        }
        let mut furthest = None;
        let value = match value.kind() {
            ValueKind::Null => Value::Null,
            ValueKind::Bool(b) => Value::Bool(b),
            ValueKind::Number(n) => number(n),
            ValueKind::String(s) => {
                if let Err(message) = self.budget.spend(s.len(), false) {
                    return Err(ParseError::new(place.loc, message));
                }
                Value::Str(s)
            }
            ValueKind::Array(items) => {
                let mut nodes = Vec::with_capacity(items.len());
                let mut after = place.after;
                for (index, item) in items.iter().enumerate() {
                    path.push(format!("[{index}]"));
                    let element = Place {
                        parent: place.parent,
                        after,
                        in_array: true,
                        loc: place.loc.clone(),
                    };
                    let (node, used) = self.convert(item, element, depth + 1, path)?;
                    path.pop();
                    after = used.or(after);
                    nodes.push(node);
                }
                furthest = after;
                Value::Seq(nodes)
            }
            ValueKind::Object(fields) => {
                let mut entries = Vec::with_capacity(fields.len());
                for (name, field) in &fields {
                    let name = name.value();
                    if let Err(message) = self.budget.spend(NODE_COST + name.len(), false) {
                        return Err(ParseError::new(place.loc, message));
                    }
                    let found = self
                        .keys
                        .find(name, place.parent, place.after, place.in_array);
                    let (loc, parent) = match found {
                        Some(id) => {
                            let definition = &self.keys.definitions[id];
                            furthest = furthest.max(Some(definition.offset));
                            let loc = Loc::new(self.file.clone(), definition.line, definition.col);
                            (loc, Parent::Field(id))
                        }
                        None => (Loc::file_only(self.file.clone()), Parent::Unknown),
                    };
                    path.push(name.to_owned());
                    let child = Place {
                        parent,
                        after: None,
                        in_array: false,
                        loc: loc.clone(),
                    };
                    let (node, _) = self.convert(field, child, depth + 1, path)?;
                    path.pop();
                    entries.push((
                        Key {
                            name: name.to_owned(),
                            loc,
                        },
                        node,
                    ));
                }
                Value::Map(entries)
            }
            ValueKind::Function => return Err(function_value(place.loc, path)),
        };
        Ok((
            Node {
                value,
                loc: place.loc,
            },
            furthest,
        ))
    }
}

// Error construction lives out of line so the recursive `convert` keeps a
// small stack frame even in debug builds.
#[cold]
#[inline(never)]
fn too_deep(loc: Loc) -> ParseError {
    ParseError::new(
        loc,
        format!("the value is nested more than {MAX_DEPTH} levels deep"),
    )
}

#[cold]
#[inline(never)]
fn function_value(loc: Loc, path: &[String]) -> ParseError {
    let mut shown = String::new();
    for part in path {
        if !shown.is_empty() && !part.starts_with('[') {
            shown.push('.');
        }
        shown.push_str(part);
    }
    let what = if shown.is_empty() {
        "the file's value".to_owned()
    } else {
        format!("the value of {shown}")
    };
    ParseError::new(
        loc,
        format!("{what} is a function, which cannot be a configuration value (call it?)"),
    )
}

/// Integral numbers that fit become integers: JSONnet has only doubles, but
/// the configuration distinguishes `retry: 3` from `ratio: 0.5`.
fn number(n: f64) -> Value {
    // 2^63: every double below it in magnitude converts exactly.
    const LIMIT: f64 = 9_223_372_036_854_775_808.0;
    if n.fract() == 0.0 && (-LIMIT..LIMIT).contains(&n) {
        Value::Int(n as i64)
    } else {
        Value::Float(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::tree::testing::{at, entry};

    /// A configuration directory with the given files (paths may contain
    /// sub-directories).
    fn dir(files: &[(&str, &str)]) -> tempfile::TempDir {
        let dir = match tempfile::tempdir() {
            Ok(dir) => dir,
            Err(err) => panic!("tempdir: {err}"),
        };
        for (name, content) in files {
            let path = dir.path().join(name);
            if let Some(parent) = path.parent()
                && let Err(err) = std::fs::create_dir_all(parent)
            {
                panic!("mkdir: {err}");
            }
            if let Err(err) = std::fs::write(&path, content) {
                panic!("write: {err}");
            }
        }
        dir
    }

    fn eval_in(dir: &tempfile::TempDir, main: &str) -> Result<Node, ParseError> {
        eval_jsonnet(&dir.path().join(main), dir.path(), &mut Budget::new())
    }

    fn ok(files: &[(&str, &str)]) -> (tempfile::TempDir, Node) {
        let d = dir(files);
        match eval_in(&d, files[0].0) {
            Ok(node) => (d, node),
            Err(err) => panic!("unexpected error: {err}"),
        }
    }

    fn err(files: &[(&str, &str)]) -> (tempfile::TempDir, ParseError) {
        let d = dir(files);
        match eval_in(&d, files[0].0) {
            Ok(node) => panic!("expected an error, got {node:?}"),
            Err(err) => (d, err),
        }
    }

    fn items(node: &Node) -> &[Node] {
        match &node.value {
            Value::Seq(items) => items,
            _ => panic!("not a list: {node:?}"),
        }
    }

    #[test]
    fn values_convert_with_integral_numbers_as_integers() {
        let (_d, root) = ok(&[(
            "main.jsonnet",
            "{ a: 1 + 2, b: 0.5, c: 1e20, d: -0, e: 'x' + 'y', f: null, g: [true, false], \
             h: std.pow(2, 63) }",
        )]);
        assert_eq!(entry(&root, "a").1.value, Value::Int(3));
        assert_eq!(entry(&root, "b").1.value, Value::Float(0.5));
        assert_eq!(entry(&root, "c").1.value, Value::Float(1e20));
        assert_eq!(entry(&root, "d").1.value, Value::Int(0));
        assert_eq!(entry(&root, "e").1.value, Value::Str("xy".into()));
        assert_eq!(entry(&root, "f").1.value, Value::Null);
        assert_eq!(
            entry(&root, "h").1.value,
            Value::Float(9_223_372_036_854_775_808.0)
        );
    }

    #[test]
    fn nested_keys_and_values_get_positions_from_the_main_file() {
        let (_d, root) = ok(&[(
            "main.jsonnet",
            "// reaction\n{\n  streams: {\n    ssh: {\n      cmd: ['journalctl', '-f'],\n      'quoted-key'+: 1,\n      \"é\":: 2,\n    },\n  },\n}\n",
        )]);
        assert_eq!(root.loc.line, 0);
        let (k, streams) = entry(&root, "streams");
        assert_eq!(at(&k.loc), (3, 3));
        assert_eq!(at(&streams.loc), (3, 3));
        let (k, ssh) = entry(streams, "ssh");
        assert_eq!(at(&k.loc), (4, 5));
        let (k, cmd) = entry(ssh, "cmd");
        assert_eq!(at(&k.loc), (5, 7));
        assert_eq!(at(&cmd.loc), (5, 7));
        assert_eq!(at(&items(cmd)[1].loc), (5, 7));
        assert_eq!(at(&entry(ssh, "quoted-key").0.loc), (6, 7));
        // Hidden fields are not part of the value.
        let Value::Map(fields) = &ssh.value else {
            panic!("not a map")
        };
        assert_eq!(fields.len(), 2);
        assert!(k.loc.file.ends_with("main.jsonnet"));
    }

    #[test]
    fn array_elements_take_the_next_matching_definition() {
        let (_d, root) = ok(&[(
            "main.jsonnet",
            "{\n  actions: [\n    { cmd: 'ban' },\n    {\n      cmd: 'unban',\n    },\n  ],\n}\n",
        )]);
        let actions = items(entry(&root, "actions").1);
        assert_eq!(at(&entry(&actions[0], "cmd").0.loc), (3, 7));
        assert_eq!(at(&entry(&actions[1], "cmd").0.loc), (5, 7));
        assert_eq!(at(&actions[1].loc), (2, 3));
    }

    #[test]
    fn keys_without_a_literal_definition_only_know_their_file() {
        let (_d, root) = ok(&[
            (
                "main.jsonnet",
                "local d = { retry: 3, after: '1h' };\nlocal lib = import 'lib.libsonnet';\n\
                 {\n  retry: d.retry,\n  f: d + { x: 1 },\n  g: lib,\n  h: { [k]: 1 for k in ['y'] },\n}\n",
            ),
            ("lib.libsonnet", "{ retry: 5, inner: { x: 2 } }\n"),
        ]);
        // The top-level key is the root object's, not the local's.
        assert_eq!(at(&entry(&root, "retry").0.loc), (4, 3));
        let (_, f) = entry(&root, "f");
        assert_eq!(at(&entry(f, "x").0.loc), (5, 12));
        // `retry` under `f` comes from the local: not a guess at line 1.
        assert_eq!(at(&entry(f, "retry").0.loc), (0, 0));
        let (_, g) = entry(&root, "g");
        let (k, inner) = entry(g, "inner");
        assert_eq!(at(&k.loc), (0, 0));
        assert!(k.loc.file.ends_with("main.jsonnet"));
        assert_eq!(at(&entry(inner, "x").0.loc), (0, 0));
        assert_eq!(at(&entry(entry(&root, "h").1, "y").0.loc), (0, 0));
    }

    #[test]
    fn a_hidden_file_inside_the_root_can_be_imported() {
        let (_d, root) = ok(&[
            (
                "main.jsonnet",
                "local lib = import '.lib.jsonnet';\n{ a: lib.a, b: (import 'sub/_b.libsonnet').b,\n  \
                 s: importstr 'sub/text.txt', n: std.length(importbin 'sub/text.txt') }\n",
            ),
            (".lib.jsonnet", "{ a: 'from lib' }"),
            (
                "sub/_b.libsonnet",
                "{ b: (import '../.lib.jsonnet').a + '!' }",
            ),
            ("sub/text.txt", "hello\n"),
        ]);
        assert_eq!(entry(&root, "a").1.value, Value::Str("from lib".into()));
        assert_eq!(entry(&root, "b").1.value, Value::Str("from lib!".into()));
        assert_eq!(entry(&root, "s").1.value, Value::Str("hello\n".into()));
        assert_eq!(entry(&root, "n").1.value, Value::Int(6));
    }

    /// A root `conf/` with `outside.jsonnet` next to it, not inside it.
    fn outside_setup(main: &str) -> (tempfile::TempDir, ParseError) {
        let d = dir(&[
            ("conf/main.jsonnet", main),
            ("outside.jsonnet", "{ secret: 1 }"),
        ]);
        let root = d.path().join("conf");
        match eval_jsonnet(&root.join("main.jsonnet"), &root, &mut Budget::new()) {
            Ok(node) => panic!("expected an error, got {node:?}"),
            Err(err) => (d, err),
        }
    }

    #[test]
    fn an_import_climbing_out_of_the_root_is_an_error_at_the_import() {
        let (_d, e) = outside_setup("{\n  a: import '../outside.jsonnet',\n}\n");
        assert!(e.loc.file.ends_with("conf/main.jsonnet"), "{e}");
        assert_eq!(at(&e.loc), (2, 6));
        assert!(e.message.contains("\"../outside.jsonnet\""), "{e}");
        assert!(
            e.message.contains("outside the configuration directory"),
            "{e}"
        );
        // Whether or not the target exists.
        let (_d, e) = outside_setup("importstr '../../nowhere'");
        assert!(
            e.message.contains("outside the configuration directory"),
            "{e}"
        );
    }

    #[test]
    fn an_absolute_import_is_an_error() {
        let d = dir(&[("conf/x.jsonnet", "{}")]);
        let absolute = d.path().join("conf/x.jsonnet");
        let (_d, e) = outside_setup(&format!("import '{}'", absolute.display()));
        assert_eq!(at(&e.loc), (1, 1));
        assert!(e.message.contains("absolute paths are not allowed"), "{e}");
    }

    #[cfg(unix)]
    #[test]
    fn a_symlink_leading_out_of_the_root_is_an_error() {
        let d = dir(&[
            (
                "conf/main.jsonnet",
                "local x = 1;\nimportbin 'link.jsonnet'",
            ),
            ("outside.jsonnet", "{}"),
        ]);
        let root = d.path().join("conf");
        if let Err(err) =
            std::os::unix::fs::symlink(d.path().join("outside.jsonnet"), root.join("link.jsonnet"))
        {
            panic!("symlink: {err}");
        }
        let e = match eval_jsonnet(&root.join("main.jsonnet"), &root, &mut Budget::new()) {
            Ok(node) => panic!("expected an error, got {node:?}"),
            Err(err) => err,
        };
        assert_eq!(at(&e.loc), (2, 1));
        assert!(
            e.message.contains("outside the configuration directory"),
            "{e}"
        );
    }

    #[test]
    fn a_missing_import_is_an_error_naming_the_path() {
        let (_d, e) = err(&[("main.jsonnet", "{ a: import 'nope.jsonnet' }")]);
        assert_eq!(at(&e.loc), (1, 6));
        assert!(e.message.contains("\"nope.jsonnet\""), "{e}");
        assert!(e.message.contains("there is no file"), "{e}");
    }

    #[test]
    fn a_syntax_error_points_at_the_offending_token() {
        let (_d, e) = err(&[("main.jsonnet", "{\n  a: 1,\n  b: ,\n}\n")]);
        assert_eq!(at(&e.loc), (3, 6));
        assert!(e.message.contains("expected"), "{e}");
        assert!(e.message.contains("found ','"), "{e}");
        let (_d, e) = err(&[("main.jsonnet", "{ a: 'x\\q' }")]);
        assert_eq!(e.loc.line, 1);
        assert!(e.message.contains("escape"), "{e}");
    }

    #[test]
    fn a_syntax_error_in_an_import_names_the_imported_file() {
        let (_d, e) = err(&[
            ("main.jsonnet", "import 'sub/lib.libsonnet'"),
            ("sub/lib.libsonnet", "// lib\n{ a: }"),
        ]);
        assert!(e.loc.file.ends_with("sub/lib.libsonnet"), "{e}");
        assert_eq!(at(&e.loc), (2, 6));
    }

    #[test]
    fn evaluation_errors_carry_position_and_readable_text() {
        let (_d, e) = err(&[("main.jsonnet", "{\n  a: nope,\n}")]);
        assert_eq!(at(&e.loc), (2, 6));
        assert!(e.message.contains("unknown variable `nope`"), "{e}");
        let (_d, e) = err(&[("main.jsonnet", "{\n  a: { b: error 'boom' },\n}")]);
        assert_eq!(at(&e.loc), (2, 11));
        assert!(e.message.contains("error: boom"), "{e}");
        assert!(e.message.contains("a.b"), "{e}");
        let (_d, e) = err(&[
            (
                "main.jsonnet",
                "local lib = import 'lib.libsonnet';\n{ a: lib.f(1) }",
            ),
            ("lib.libsonnet", "{ f(x): x - 'a' }"),
        ]);
        assert!(e.loc.file.ends_with("lib.libsonnet"), "{e}");
        assert!(e.message.contains("does not apply to"), "{e}");
    }

    #[test]
    fn runaway_recursion_stops_at_the_stack_limit() {
        let (_d, e) = err(&[("main.jsonnet", "local f(x) = f(x + 1) + 1;\n{ a: f(0) }")]);
        assert!(e.message.contains("deeper than 500"), "{e}");
        assert!(e.loc.file.ends_with("main.jsonnet"), "{e}");
    }

    #[test]
    fn a_function_value_is_an_error_naming_its_key() {
        let (_d, e) = err(&[("main.jsonnet", "{\n  s: { f: function(x) x },\n}")]);
        assert!(e.message.contains("the value of s.f is a function"), "{e}");
    }

    #[test]
    fn values_nested_too_deep_are_an_error_and_deep_ones_convert() {
        let nest = |n: usize| format!("std.foldl(function(acc, x) [acc], std.range(1, {n}), [])");
        let (_d, root) = ok(&[("main.jsonnet", &nest(200))]);
        assert_eq!(items(&root).len(), 1);
        // The evaluator's own stack limit catches this before the tree's
        // depth limit would.
        let (_d, e) = err(&[("main.jsonnet", &nest(600))]);
        assert!(e.message.contains("nested"), "{e}");
        assert!(e.message.len() < 400, "{e}");
    }

    #[test]
    fn std_trace_prints_nothing_and_passes_its_value() {
        let (_d, root) = ok(&[("main.jsonnet", "{ a: std.trace('hello', 1) }")]);
        assert_eq!(entry(&root, "a").1.value, Value::Int(1));
    }

    #[test]
    fn key_scan_skips_comments_strings_slices_and_field_access() {
        let text = Text::new(
            b"# a: 1\n/* b: 2 */ local s = 'c: 3';\n{ x: [1, 2][0:1], y: self.x, 'q\\'s': |||\n  d: 4\n|||, e+:: 5 }"
                .to_vec(),
        );
        let keys = KeyIndex::new(&text);
        let mut names: Vec<&str> = keys.by_name.keys().map(String::as_str).collect();
        names.sort_unstable();
        assert_eq!(names, ["e", "q's", "x", "y"]);
    }

    #[test]
    fn a_realistic_reaction_config_evaluates() {
        let lib = r#"{
  banFor(time):: {
    ban: { cmd: ['ip46tables', '-w', '-A', 'reaction', '-s', '<ip>', '-j', 'DROP'] },
    unban: { cmd: ['ip46tables', '-w', '-D', 'reaction', '-s', '<ip>', '-j', 'DROP'], after: time },
  },
}
"#;
        let main = r#"local lib = import '.lib.jsonnet';
{
  patterns: {
    ip: {
      regex: @'(?:(?:[0-9]{1,3}\.){3}[0-9]{1,3})|(?:[0-9a-fA-F:]{2,90})',
      ignore: ['127.0.0.1', '::1'],
    },
  },
  start: [['ip46tables', '-w', '-N', 'reaction']],
  streams: {
    ssh: {
      cmd: ['journalctl', '-fn0', '-u', 'sshd.service'],
      filters: {
        failedlogin: {
          regex: ['authentication failure;.*rhost=<ip>'],
          retry: 3,
          retryperiod: '6h',
          actions: lib.banFor('48h'),
        },
      },
    },
  },
}
"#;
        let (_d, root) = ok(&[("main.jsonnet", main), (".lib.jsonnet", lib)]);
        let (_, ip) = entry(entry(&root, "patterns").1, "ip");
        assert_eq!(
            entry(ip, "regex").1.value,
            Value::Str(r"(?:(?:[0-9]{1,3}\.){3}[0-9]{1,3})|(?:[0-9a-fA-F:]{2,90})".into())
        );
        let (_, ssh) = entry(entry(&root, "streams").1, "ssh");
        let (k, filter) = entry(entry(ssh, "filters").1, "failedlogin");
        assert_eq!(at(&k.loc), (14, 9));
        let (k, retry) = entry(filter, "retry");
        assert_eq!(at(&k.loc), (16, 11));
        assert_eq!(retry.value, Value::Int(3));
        let (k, actions) = entry(filter, "actions");
        assert_eq!(at(&k.loc), (18, 11));
        let (k, unban) = entry(actions, "unban");
        // Written in the library: only the file is known.
        assert_eq!(at(&k.loc), (0, 0));
        assert_eq!(entry(unban, "after").1.value, Value::Str("48h".into()));
    }
}
