//! Small deterministic data-parallel helpers on top of `std::thread::scope`.
//! Work is split statically, so results never depend on scheduling or the number of cores.

use std::num::NonZeroUsize;

/// Number of worker threads to use.
pub fn threads() -> usize {
    std::thread::available_parallelism().map(NonZeroUsize::get).unwrap_or(1).clamp(1, 64)
}

/// Runs `f(i)` for `i in 0..n` on several threads and returns the results in index order.
pub fn map<T: Send>(n: usize, f: impl Fn(usize) -> T + Sync) -> Vec<T> {
    let t = threads().min(n.max(1));
    if t <= 1 {
        return (0..n).map(f).collect();
    }
    let f = &f;
    let mut parts: Vec<Vec<(usize, T)>> = std::thread::scope(|s| {
        let handles: Vec<_> =
            (0..t).map(|w| s.spawn(move || (w..n).step_by(t).map(|i| (i, f(i))).collect::<Vec<_>>())).collect();
        handles
            .into_iter()
            .map(|h| match h.join() {
                Ok(v) => v,
                Err(p) => std::panic::resume_unwind(p),
            })
            .collect()
    });
    let mut out: Vec<Option<T>> = (0..n).map(|_| None).collect();
    for part in parts.iter_mut() {
        for (i, v) in part.drain(..) {
            out[i] = Some(v);
        }
    }
    out.into_iter().flatten().collect()
}

/// Calls `f(chunk_index, chunk)` for every `chunk`-sized piece of `data`, on several threads.
pub fn for_chunks<T: Send>(data: &mut [T], chunk: usize, f: impl Fn(usize, &mut [T]) + Sync) {
    let chunk = chunk.max(1);
    let mut pieces: Vec<(usize, &mut [T])> = data.chunks_mut(chunk).enumerate().collect();
    let t = threads().min(pieces.len().max(1));
    if t <= 1 {
        for (i, c) in pieces {
            f(i, c);
        }
        return;
    }
    let mut groups: Vec<Vec<(usize, &mut [T])>> = (0..t).map(|_| Vec::new()).collect();
    for (k, p) in pieces.drain(..).enumerate() {
        groups[k % t].push(p);
    }
    let f = &f;
    std::thread::scope(|s| {
        for g in groups {
            s.spawn(move || {
                for (i, c) in g {
                    f(i, c);
                }
            });
        }
    });
}
