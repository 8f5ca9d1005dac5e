//! `dllm generate --visual`: a live view of the canvas while it decodes (a
//! [`DecodeObserver`] fed every forward's commits). On a terminal the view is redrawn in place
//! with ANSI escapes: masked positions `░` (yellow inside the current block), committed tokens,
//! the newest ones highlighted, and NFE and TPF above. Elsewhere (a pipe, a file) every forward
//! prints one plain line: the rows' text with `_` for masks and `⏎` for newlines.

use std::io::{IsTerminal, Write};

use dllm::decode::{DecodeObserver, TraceStep};
use dllm::model::Tokenizer;

/// The generated part of every row as the forwards fill it.
pub(crate) struct Visual<'a> {
    tok: &'a Tokenizer,
    /// Per row, per generated position: the committed token.
    rows: Vec<Vec<Option<u32>>>,
    /// Per row: the positions the last forward committed.
    newest: Vec<Vec<usize>>,
    block_length: usize,
    block: usize,
    nfe: usize,
    committed: usize,
    tty: bool,
}

const RESET: &str = "\x1b[0m";

impl<'a> Visual<'a> {
    /// A view of `rows` generations of `gen_length` positions in blocks of `block_length`.
    pub(crate) fn new(tok: &'a Tokenizer, rows: usize, gen_length: usize, block_length: usize) -> Self {
        Visual {
            tok,
            rows: vec![vec![None; gen_length]; rows],
            newest: vec![vec![]; rows],
            block_length: block_length.max(1),
            block: 0,
            nfe: 0,
            committed: 0,
            tty: std::io::stdout().is_terminal(),
        }
    }

    /// How one committed token shows: its text, or `□` for one with none (an end token).
    fn piece(&self, id: u32) -> String {
        let s = self.tok.decode(&[id]);
        if s.is_empty() {
            "□".into()
        } else {
            s
        }
    }

    /// The whole view, with escapes on a terminal.
    fn render(&self) -> String {
        let blocks = self.rows.first().map_or(0, |r| r.len().div_ceil(self.block_length));
        let tpf = self.committed as f64 / self.nfe.max(1) as f64;
        let mut s = format!(
            "dllm --visual | forward {} | block {}/{blocks} | NFE {} | TPF {tpf:.2}\n",
            self.nfe,
            self.block + 1,
            self.nfe
        );
        let current = self.block * self.block_length..(self.block + 1) * self.block_length;
        for (b, row) in self.rows.iter().enumerate() {
            if self.rows.len() > 1 {
                s.push_str(&format!("--- [{b}]\n"));
            }
            for (p, cell) in row.iter().enumerate() {
                let (text, style) = match cell {
                    None if current.contains(&p) => ("░".to_string(), "\x1b[33m"),
                    None => ("░".to_string(), "\x1b[2m"),
                    Some(id) if self.newest[b].contains(&p) => (self.piece(*id), "\x1b[1;7;32m"),
                    Some(id) => (self.piece(*id), ""),
                };
                s.push_str(&format!("{style}{text}{}", if style.is_empty() { "" } else { RESET }));
            }
            s.push('\n');
        }
        s
    }

    /// One plain line: the header's numbers, then each row with `_` for masks.
    fn line(&self) -> String {
        let tpf = self.committed as f64 / self.nfe.max(1) as f64;
        let rows: Vec<String> = self
            .rows
            .iter()
            .map(|row| {
                row.iter()
                    .map(|c| c.map_or_else(|| "_".to_string(), |id| self.piece(id).replace('\n', "⏎")))
                    .collect()
            })
            .collect();
        format!(
            "forward {} block {} NFE {} TPF {tpf:.2} | {}",
            self.nfe,
            self.block + 1,
            self.nfe,
            rows.join(" | ")
        )
    }
}

impl DecodeObserver for Visual<'_> {
    fn wants_forwards(&self) -> bool {
        true
    }

    fn forward_done(&mut self, step: &TraceStep) {
        self.nfe += 1;
        self.block = step.block;
        for (b, commits) in step.committed.iter().enumerate().take(self.rows.len()) {
            self.newest[b] = commits.iter().map(|&(p, _)| p).collect();
            for &(p, id) in commits {
                if let Some(cell) = self.rows[b].get_mut(p) {
                    self.committed += usize::from(cell.is_none());
                    *cell = Some(id);
                }
            }
        }
        let mut out = std::io::stdout().lock();
        // the view is best effort: a closed stdout must not stop the decode
        let _ = if self.tty {
            write!(out, "\x1b[H\x1b[J{}", self.render())
        } else {
            writeln!(out, "{}", self.line())
        };
        let _ = out.flush();
    }
}
