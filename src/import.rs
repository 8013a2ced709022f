//! `pullahead import`: recordings that other tools write become schema-v1
//! event files, through the same [`Normalizer`] the live watcher uses.
//!
//! - `simkube`: SimKube trace files, JSON or the msgpack `.sktrace` form
//!   (`{version, config, events: [{ts, applied_objs, deleted_objs}], …}`).
//! - `kube-watch`: what `kubectl get … --watch --output-watch-events -o json`
//!   prints: concatenated `{"type": "ADDED", "object": {…}}` values, not
//!   necessarily one per line. Bare objects and `List`s are accepted too.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::event::{Event, EventWriter, Header};
use crate::normalize::{self, Change, Normalizer, Object};

/// Errors from importing a recording.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The file could not be read.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The file is not in the format named.
    #[error("{}: {msg}", located(path, *.line, *.column))]
    Malformed {
        /// The file.
        path: String,
        /// 1-based line, where the text has lines and the reader knows it.
        line: Option<u64>,
        /// 1-based column, where the parser can tell.
        column: Option<u64>,
        /// What is wrong.
        msg: String,
    },
    /// An object could not be normalised.
    #[error("{path}:{line}: {source}")]
    Object {
        /// The file.
        path: String,
        /// 1-based line where the object starts.
        line: u64,
        /// What the normaliser said.
        source: normalize::Error,
    },
    /// Writing the events failed.
    #[error(transparent)]
    Event(#[from] crate::event::Error),
}

/// `path`, `path:LINE` or `path:LINE:COLUMN`, as much as is known.
fn located(path: &str, line: Option<u64>, column: Option<u64>) -> String {
    match (line, column) {
        (Some(l), Some(c)) => format!("{path}:{l}:{c}"),
        (Some(l), None) => format!("{path}:{l}"),
        _ => path.to_string(),
    }
}

/// Result with this module's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The recording formats `import` reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// SimKube trace (JSON or msgpack `.sktrace`).
    Simkube,
    /// `kubectl get --watch --output-watch-events -o json` output.
    KubeWatch,
}

/// `pullahead import`: convert a recording to an event file.
#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// Format of the input.
    #[arg(long, value_enum)]
    pub format: Format,
    /// The recording to read.
    pub file: PathBuf,
    /// Output event file (JSON Lines, schema v1); `-` is standard output.
    #[arg(long, default_value = "-")]
    pub out: PathBuf,
}

/// What an import produced.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Summary {
    /// Objects read.
    pub objects: u64,
    /// Objects skipped because pullahead does not read their kind, by kind.
    pub skipped: BTreeMap<String, u64>,
    /// Events written, by type.
    pub events: BTreeMap<&'static str, u64>,
}

/// Runs `pullahead import`.
pub fn run(args: &Args) -> Result<Summary> {
    let name = args.file.display().to_string();
    let bytes = std::fs::read(&args.file).map_err(|source| Error::Io {
        path: name.clone(),
        source,
    })?;
    let (events, summary) = convert(args.format, &bytes, &name)?;
    let t0 = events.first().map_or(0.0, |e| e.ts);
    let source = format!("pullahead import --format {:?} {name}", args.format).to_lowercase();
    let mut w = EventWriter::create(&args.out, &Header::new(t0, source))?;
    for e in &events {
        w.write(e)?;
    }
    w.flush()?;
    Ok(summary)
}

/// Converts a whole recording in `format` to events, in time order.
pub fn convert(format: Format, bytes: &[u8], name: &str) -> Result<(Vec<Event>, Summary)> {
    let mut imp = Importer {
        name,
        norm: Normalizer::new(),
        out: Vec::new(),
        summary: Summary::default(),
        last_ts: f64::NEG_INFINITY,
    };
    match format {
        Format::Simkube => imp.simkube(bytes)?,
        Format::KubeWatch => imp.kube_watch(bytes)?,
    }
    for e in &imp.out {
        *imp.summary.events.entry(e.body.type_name()).or_default() += 1;
    }
    Ok((imp.out, imp.summary))
}

struct Importer<'a> {
    name: &'a str,
    norm: Normalizer,
    out: Vec<Event>,
    summary: Summary,
    last_ts: f64,
}

impl Importer<'_> {
    fn malformed(&self, line: Option<u64>, msg: impl Into<String>) -> Error {
        Error::Malformed {
            path: self.name.to_string(),
            line,
            column: None,
            msg: msg.into(),
        }
    }

    /// A serde_json error over the whole file, at its line and column.
    fn malformed_json(&self, e: &serde_json::Error) -> Error {
        let (pos, msg) = crate::position::json(e);
        Error::Malformed {
            path: self.name.to_string(),
            line: pos.map(|p| p.line),
            column: pos.map(|p| p.column),
            msg,
        }
    }

    /// Feeds one object; `ts` is clamped so that the output never goes back.
    fn feed(&mut self, ts: Option<f64>, value: Value, deleted: bool, line: u64) -> Result<()> {
        self.summary.objects += 1;
        let obj = match Object::from_value(value) {
            Ok(o) => o,
            Err(normalize::Error::Unsupported { kind, .. }) => {
                let n = self.summary.skipped.entry(kind.clone()).or_default();
                if *n == 0 {
                    tracing::warn!(
                        file = self.name,
                        line,
                        kind,
                        "skipping objects of a kind pullahead does not read"
                    );
                }
                *n += 1;
                return Ok(());
            }
            Err(source) => {
                return Err(Error::Object {
                    path: self.name.to_string(),
                    line,
                    source,
                });
            }
        };
        let ts = ts
            .or_else(|| obj.observed_time())
            .unwrap_or(self.last_ts.max(0.0))
            .max(self.last_ts);
        self.last_ts = ts;
        let change = if deleted {
            Change::Deleted(obj)
        } else {
            Change::Applied(obj)
        };
        self.norm
            .apply(ts, change, &mut self.out)
            .map_err(|source| Error::Object {
                path: self.name.to_string(),
                line,
                source,
            })
    }

    fn simkube(&mut self, bytes: &[u8]) -> Result<()> {
        let is_json = bytes.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{');
        let root: Value = if is_json {
            serde_json::from_slice(bytes).map_err(|e| self.malformed_json(&e))?
        } else {
            rmp_serde::from_slice(bytes)
                .map_err(|e| self.malformed(None, format!("not a SimKube msgpack trace: {e}")))?
        };
        // `rmp_serde::to_vec` writes structs as arrays: [version, config, events, …].
        let (version, events) = match &root {
            Value::Object(m) => (m.get("version").cloned(), m.get("events").cloned()),
            Value::Array(a) => (a.first().cloned(), a.get(2).cloned()),
            _ => (None, None),
        };
        match version.as_ref().and_then(Value::as_u64) {
            Some(1..=2) => {}
            Some(v) => {
                return Err(self.malformed(
                    None,
                    format!("SimKube trace version {v} is not supported (1 or 2)"),
                ));
            }
            None => return Err(self.malformed(None, "not a SimKube trace: no version")),
        }
        let Some(Value::Array(events)) = events else {
            return Err(self.malformed(None, "not a SimKube trace: no events list"));
        };
        // JSON line numbers of each event are not kept by serde_json::Value;
        // errors name the event index instead.
        for (i, ev) in events.into_iter().enumerate() {
            let at = |m: &str| format!("events[{i}]: {m}");
            let (ts, applied, deleted) = match ev {
                Value::Object(mut m) => (
                    m.get("ts").and_then(Value::as_f64),
                    m.remove("applied_objs"),
                    m.remove("deleted_objs"),
                ),
                Value::Array(mut a) if a.len() >= 3 => {
                    let deleted = a.pop();
                    let applied = a.pop();
                    (a.first().and_then(Value::as_f64), applied, deleted)
                }
                _ => return Err(self.malformed(None, at("not an event object"))),
            };
            let ts = ts.ok_or_else(|| self.malformed(None, at("no numeric ts")))?;
            for (list, del) in [(applied, false), (deleted, true)] {
                let list = match list {
                    Some(Value::Array(l)) => l,
                    None | Some(Value::Null) => Vec::new(),
                    Some(_) => return Err(self.malformed(None, at("objects are not a list"))),
                };
                for obj in list {
                    self.feed(Some(ts), obj, del, 1).map_err(|e| match e {
                        Error::Object { path, source, .. } => Error::Malformed {
                            path,
                            line: None,
                            column: None,
                            msg: at(&source.to_string()),
                        },
                        other => other,
                    })?;
                }
            }
        }
        Ok(())
    }

    fn kube_watch(&mut self, bytes: &[u8]) -> Result<()> {
        let line_at = |offset: usize| -> u64 {
            1 + bytes[..offset.min(bytes.len())]
                .iter()
                .filter(|&&b| b == b'\n')
                .count() as u64
        };
        let mut stream = serde_json::Deserializer::from_slice(bytes).into_iter::<Value>();
        let mut start = 0usize;
        let mut any = false;
        loop {
            // The value starts after any whitespace following the last one.
            let skip = bytes[start..]
                .iter()
                .take_while(|b| b.is_ascii_whitespace())
                .count();
            let line = line_at(start + skip);
            let Some(item) = stream.next() else { break };
            let value = item.map_err(|e| self.malformed_json(&e))?;
            start = stream.byte_offset();
            any = true;
            self.watch_value(value, line)?;
        }
        if !any {
            return Err(self.malformed(None, "no JSON values: the file is empty"));
        }
        Ok(())
    }

    fn watch_value(&mut self, value: Value, line: u64) -> Result<()> {
        let Value::Object(mut m) = value else {
            return Err(self.malformed(Some(line), "expected a JSON object"));
        };
        if m.get("kind").and_then(Value::as_str) == Some("List") {
            let items = match m.remove("items") {
                Some(Value::Array(items)) => items,
                _ => return Err(self.malformed(Some(line), "a List without items")),
            };
            for item in items {
                self.feed(None, item, false, line)?;
            }
            return Ok(());
        }
        let kind = m.get("type").and_then(Value::as_str).map(str::to_string);
        match (kind.as_deref(), m.remove("object")) {
            (Some("ADDED" | "MODIFIED"), Some(obj)) => self.feed(None, obj, false, line),
            (Some("DELETED"), Some(obj)) => self.feed(None, obj, true, line),
            (Some("BOOKMARK" | "ERROR"), _) => Ok(()),
            (Some(t), Some(_)) => {
                Err(self.malformed(Some(line), format!("unknown watch event type {t:?}")))
            }
            (_, None) if m.contains_key("apiVersion") => {
                self.feed(None, Value::Object(m), false, line)
            }
            _ => Err(self.malformed(
                Some(line),
                "neither a watch event ({type, object}) nor a Kubernetes object",
            )),
        }
    }
}

/// Reads `path` and converts it; for tests and tools.
pub fn convert_file(format: Format, path: &Path) -> Result<(Vec<Event>, Summary)> {
    let name = path.display().to_string();
    let bytes = std::fs::read(path).map_err(|source| Error::Io {
        path: name.clone(),
        source,
    })?;
    convert(format, &bytes, &name)
}
