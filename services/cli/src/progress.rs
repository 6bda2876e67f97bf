//! Progress of long commands: on a terminal a bar with counts and ETA (each item's line printed
//! above it); otherwise one plain `[i/n]` line per item, so script logs stay readable.

use std::cell::Cell;

/// Progress over a known number of items.
pub struct Progress {
    bar: Option<indicatif::ProgressBar>,
    len: usize,
    done: Cell<usize>,
}

impl Progress {
    /// Progress over `len` items, labelled `what` on the bar.
    pub fn new(len: usize, what: &str) -> Progress {
        let bar = std::io::IsTerminal::is_terminal(&std::io::stderr()).then(|| {
            let b = indicatif::ProgressBar::new(len as u64);
            let template = format!("{what} {{pos}}/{{len}} [{{bar:30}}] {{elapsed_precise}} elapsed, eta {{eta}}");
            if let Ok(style) = indicatif::ProgressStyle::with_template(&template) {
                b.set_style(style.progress_chars("=> "));
            }
            b
        });
        Progress { bar, len, done: Cell::new(0) }
    }

    /// One item finished; `line` says what it gave.
    pub fn item(&self, line: &str) {
        let done = self.done.get() + 1;
        self.done.set(done);
        match &self.bar {
            Some(b) => {
                b.println(line);
                b.inc(1);
            }
            None => eprintln!("[{done}/{}] {line}", self.len),
        }
    }

    /// Removes the bar (nothing to do without a terminal).
    pub fn finish(self) {
        if let Some(b) = self.bar {
            b.finish_and_clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_items_without_a_terminal() {
        // Test runs have no terminal on stderr: plain lines, counted.
        let p = Progress::new(2, "cases");
        p.item("a");
        p.item("b");
        assert_eq!(p.done.get(), 2);
        p.finish();
    }
}
